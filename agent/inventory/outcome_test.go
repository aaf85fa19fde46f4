package inventory

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
)

func TestBootstrapOutcome(t *testing.T) {
	live, ended := context.Background(), func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want string
	}{
		{live, nil, "success"},
		{live, fmt.Errorf("wrapped: %w", &HeldError{Why: "timeout"}), "held"},
		{live, &BootstrapError{Event: "host-fault", Host: true}, "host-fault"},
		{live, &BootstrapError{Event: "timeout"}, "failure"},
		{live, errors.New("snapshot: no space left on device"), "failure"},
		{ended, &BootstrapError{Event: "interrupted"}, "interrupted"},
	} {
		if got := bootstrapOutcome(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestOnBootstrap: each bootstrap reports its outcome once.
func TestOnBootstrap(t *testing.T) {
	root := btrfstest.Mount(t, 256<<20)
	makeMachine(t, filepath.Join(root, "v"), "m", "id-m")
	var mu sync.Mutex
	var got []string
	e := &Enumerator{Root: root, ToolchainName: "tc", ToolchainID: "tcid", AgentVersion: mustVersion(t, testVersion),
		Bootstrapper: failingBootstrapper{errors.New("machine did not boot")}, Log: testLog(t),
		OnBootstrap: func(o string) { mu.Lock(); got = append(got, o); mu.Unlock() }}
	if _, err := e.Enumerate(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Succeeded(filepath.Join(root, "v", "m")) // end its backoff
	e.Bootstrapper = FakeBootstrapper{mustVersion(t, testVersion)}
	if ms, err := e.Enumerate(context.Background()); err != nil || len(ms) != 1 {
		t.Fatalf("%d machines, %v", len(ms), err)
	}
	if want := []string{"failure", "success"}; !slices.Equal(got, want) {
		t.Errorf("outcomes %q, want %q", got, want)
	}
}
