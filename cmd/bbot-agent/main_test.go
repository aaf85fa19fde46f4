package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/build2/bbot-agent-go/agent/controllertest"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"bbot-agent": main,
	})
}

// TestScripts runs the end-to-end command scripts in testdata/script.
func TestScripts(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join(root, "testdata", "script"),
		RequireExplicitExec: true,
		Cmds:                scriptCmds,
		Condition:           scriptCondition,
		UpdateScripts:       os.Getenv("UPDATE_SCRIPTS") != "",
		Setup: func(env *testscript.Env) error {
			env.Setenv("TESTDATA", filepath.Join(root, "testdata"))
			// Every script gets a strict test controller.
			srv := controllertest.New()
			env.Defer(srv.Close)
			env.Setenv("CONTROLLER", srv.TaskURL())
			env.Values["controller"] = srv
			return nil
		},
	})
}
