package agent

import (
	"path/filepath"
	"strconv"

)

// TEMPORARY until the opts and prio branches merge.

type SlotPlan struct {
	Instance, Offset, TFTPPort                       int
	Tap                                              string
	TFTPBootstrapPut, TFTPBuildGet, TFTPBuildPut     string
	RunDir                                           string
	JournalInstance                                  int
}

func Offset(toolchainNum, instance int) int { return (toolchainNum-1)*100 + instance }

func PlanSlot(o *Options, instance int) SlotPlan {
	off := Offset(o.ToolchainNum, instance)
	tc := o.ToolchainName + "-" + strconv.Itoa(instance)
	return SlotPlan{Instance: instance, Offset: off, TFTPPort: o.TFTPPort + off, Tap: "bb" + strconv.Itoa(off),
		TFTPBootstrapPut: filepath.Join(o.TFTP, "bootstrap", tc), TFTPBuildGet: filepath.Join(o.TFTP, "build", tc, "get"),
		TFTPBuildPut: filepath.Join(o.TFTP, "build", tc, "put"), RunDir: filepath.Join(o.RunDir, strconv.Itoa(instance)), JournalInstance: instance}
}

