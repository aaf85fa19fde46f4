package agent

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

// Auxiliary machines (bbot 0.17): machines whose header says role:
// auxiliary are offered with --auxiliary-ram > 0 and booted, before the
// build machine, for a task that names them (auxiliary-machine[-<env>]).
// They live on a private bridge of the slot, which the agent makes for the
// task; the build machine gets a second NIC on it. Each PUTs an
// environment file over TFTP; the build machine's task carries their
// variables as auxiliary-environment. README "Auxiliary machines".

// DefaultAuxiliaryRange holds every slot's private network unless
// --auxiliary-range says otherwise: slot offset N gets the /28 block N-1.
const DefaultAuxiliaryRange = "10.254.0.0/16"

const (
	auxBlockBits = 28 // a slot's private network: host, build NIC, 9 auxiliary machines
	maxAuxiliary = 9  // per task (bpkg: at most 9 auxiliary configurations)
	// auxEnvironmentName is what an auxiliary machine uploads; its size
	// and line count are capped.
	auxEnvironmentName = "environment"
	maxEnvironment     = 16 << 10
	maxEnvironmentVars = 256
	// <slot run dir>/a<k> holds auxiliary machine k's sockets and VM
	// record (short: sockets must fit in sun_path).
	auxRunPrefix = "a"
	// minMachineRAM (KiB) is machine.Config's floor.
	minMachineRAM = 64 << 10
)

func isAuxiliary(h manifest.MachineHeader) bool { return h.Role == "auxiliary" }

// validateAuxiliary checks the auxiliary options (Validate).
func (o *Options) validateAuxiliary() error {
	if o.AuxiliaryRange != "" {
		if _, err := parseAuxiliaryRange(o.AuxiliaryRange); err != nil {
			return err
		}
	}
	if o.AuxiliaryRAM == 0 {
		return nil
	}
	ram := strconv.FormatUint(o.AuxiliaryRAM, 10)
	switch {
	case o.AuxiliaryRAM < minMachineRAM:
		return &OptionError{"auxiliary-ram", ram, "must be 0 (no auxiliary machines) or at least 65536 KiB, one machine's minimum"}
	case o.Network == "user":
		return &OptionError{"auxiliary-ram", ram, "auxiliary machines need --network bridge (they live on a private bridge the agent makes); use 0 with --network user"}
	}
	for i := o.Instance; i < o.Instance+max(o.Slots, 1); i++ {
		if _, err := AuxiliaryBlock(o, i); err != nil {
			return err
		}
	}
	if abs, err := filepath.Abs(o.RunDir); o.RunDir != "" && err == nil && len(abs)+len("/99/"+auxRunPrefix+"9") > machine.MaxRunDir {
		return &OptionError{"run-dir", o.RunDir, "too long for auxiliary machines: their sockets <run-dir>/<instance>/" + auxRunPrefix + "<k>/" + machine.ConsoleSocketName + " must fit in a UNIX socket path"}
	}
	return nil
}

func parseAuxiliaryRange(s string) (netip.Prefix, error) {
	p, err := parseIPv4Prefix("auxiliary-range", s, DefaultAuxiliaryRange)
	if err == nil && p.Bits() > auxBlockBits {
		return netip.Prefix{}, &OptionError{"auxiliary-range", s, fmt.Sprintf("must be /%d or shorter: each slot needs a /%d", auxBlockBits, auxBlockBits)}
	}
	return p, err
}

// AuxiliaryBlock is the private /28 of instance under o: block Offset-1 of
// --auxiliary-range (unique on the host, like the guest blocks).
func AuxiliaryBlock(o *Options, instance int) (netip.Prefix, error) {
	s := cmp.Or(o.AuxiliaryRange, DefaultAuxiliaryRange)
	r, err := parseAuxiliaryRange(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	index := uint64(Offset(o.ToolchainNum, instance) - 1)
	blocks := uint64(1) << (auxBlockBits - r.Bits())
	if index >= blocks {
		return netip.Prefix{}, &OptionError{"auxiliary-range", s, fmt.Sprintf("instance %d of toolchain %d needs /%d block number %d, but the range holds %d; give a larger --auxiliary-range",
			instance, o.ToolchainNum, auxBlockBits, index, blocks)}
	}
	first := addrU32(r.Addr()) + uint32(index)<<(32-auxBlockBits)
	return netip.PrefixFrom(netip.AddrFrom4(u32Addr(first)), auxBlockBits), nil
}

// auxNet is one slot's private network: the bridge bbx<offset> with the
// block's first address (the host: TFTP, gateway), the build machine's
// second NIC on tap bby<offset> with the second, and auxiliary machine k
// (1..9) on tap bbz<offset>_<k> with the (2+k)-th.
type auxNet struct {
	offset int
	block  netip.Prefix
}

func planAuxNet(o *Options, p SlotPlan) (auxNet, error) {
	b, err := AuxiliaryBlock(o, p.Instance)
	return auxNet{offset: p.Offset, block: b}, err
}

func (n auxNet) Bridge() string       { return "bbx" + strconv.Itoa(n.offset) }
func (n auxNet) BuildTap() string     { return "bby" + strconv.Itoa(n.offset) }
func (n auxNet) Tap(k int) string     { return fmt.Sprintf("bbz%d_%d", n.offset, k) }
func (n auxNet) Host() netip.Addr     { return GuestAddr(n.block.Addr(), 1) }
func (n auxNet) Build() netip.Addr    { return GuestAddr(n.block.Addr(), 2) }
func (n auxNet) Aux(k int) netip.Addr { return GuestAddr(n.block.Addr(), 2+k) }
func (n auxNet) withLen(a netip.Addr) string {
	return netip.PrefixFrom(a, auxBlockBits).String()
}

// interfaces are every name the slot's private network may use.
func (n auxNet) interfaces() []string {
	names := []string{n.Bridge(), n.BuildTap()}
	for k := 1; k <= maxAuxiliary; k++ {
		names = append(names, n.Tap(k))
	}
	return names
}

// checkAuxiliaryHost refuses a private network that overlaps a route or
// address the host already has (another network would become
// unreachable, or the auxiliary machines could reach it), other than this
// toolchain's own leftovers (swept at start-up).
func checkAuxiliaryHost(o *Options, plans []SlotPlan) error {
	if o.AuxiliaryRAM == 0 || o.Network != "bridge" || o.FakeBootstrap || o.FakeBuild || o.FakeMachine != "" {
		return nil
	}
	routes, err := hostRoutes()
	if err != nil {
		return nil // no /proc/net/route: nothing to compare with
	}
	for _, p := range plans {
		n, err := planAuxNet(o, p)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.prefix.Bits() == 0 || r.dev == n.Bridge() {
				continue
			}
			if r.prefix.Overlaps(n.block) {
				return &OptionError{"auxiliary-range", cmp.Or(o.AuxiliaryRange, DefaultAuxiliaryRange),
					fmt.Sprintf("instance %d's private network %s overlaps the host's route %s on %s; give an --auxiliary-range the host does not use", p.Instance, n.block, r.prefix, r.dev)}
			}
		}
	}
	return nil
}

type hostRoute struct {
	dev    string
	prefix netip.Prefix
}

// hostRoutes reads the IPv4 routing table (/proc/net/route: hex,
// little-endian addresses).
func hostRoutes() ([]hostRoute, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rs []hostRoute
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 || fs[0] == "Iface" {
			continue
		}
		dst, err1 := strconv.ParseUint(fs[1], 16, 32)
		mask, err2 := strconv.ParseUint(fs[7], 16, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		le := func(v uint64) netip.Addr {
			return netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)})
		}
		bits := 0
		for m := uint32(mask); m != 0; m &= m - 1 {
			bits++
		}
		rs = append(rs, hostRoute{dev: fs[0], prefix: netip.PrefixFrom(le(dst), bits).Masked()})
	}
	return rs, sc.Err()
}

// offerable reports whether the machine is offered: a build machine if its
// ram-minimum fits --build-ram, an auxiliary one only with --auxiliary-ram
// (and bridge networking, which Validate requires for it) if its
// ram-minimum fits that.
func (a *Agent) offerable(h manifest.MachineHeader) bool {
	o := a.Opts
	switch {
	case !isAuxiliary(h):
		if h.RAMMinimum > o.RAM {
			a.Log.Debug("machine not offered: its ram-minimum exceeds --build-ram", "machine", h.Name, "ram-minimum", h.RAMMinimum)
			return false
		}
	case o.AuxiliaryRAM == 0 || o.Network != "bridge":
		a.auxOffNotice.Do(func() {
			a.Log.Info("auxiliary machines are not offered: --auxiliary-ram is 0", "machine", h.Name)
		})
		return false
	case !auxiliaryName(h.Name):
		if _, logged := a.auxBadNames.LoadOrStore(h.Name, true); !logged {
			a.Log.Warn("auxiliary machine not offered: its name needs <arch>-<os>[-...] (brep refuses the whole request otherwise)", "machine", h.Name)
		}
		return false
	case h.RAMMinimum > o.AuxiliaryRAM:
		a.Log.Debug("auxiliary machine not offered: its ram-minimum exceeds --auxiliary-ram", "machine", h.Name, "ram-minimum", h.RAMMinimum)
		return false
	}
	return true
}

// auxiliaryName: brep derives an auxiliary machine's configuration name
// by dropping the first (architecture) component, so it needs two.
func auxiliaryName(name string) bool {
	arch, rest, ok := strings.Cut(name, "-")
	return ok && arch != "" && rest != "" && !strings.HasPrefix(rest, "-")
}

// auxRequest is one auxiliary machine a task names: auxiliary-machine-<env>
// (Env "" for a plain auxiliary-machine).
type auxRequest struct{ Env, Machine string }

func auxiliaryRequests(t *manifest.Task) []auxRequest {
	var rs []auxRequest
	for _, nv := range t.Fields {
		if nv.Name == "auxiliary-machine" {
			rs = append(rs, auxRequest{Machine: nv.Value})
		} else if env, ok := strings.CutPrefix(nv.Name, "auxiliary-machine-"); ok && env != "" {
			rs = append(rs, auxRequest{Env: env, Machine: nv.Value})
		}
	}
	return rs
}

// field is the request's task field name, for notes.
func (r auxRequest) field() string {
	if r.Env == "" {
		return "auxiliary-machine"
	}
	return "auxiliary-machine-" + r.Env
}

// envPrefix is bbot's variable prefix for environment env: upper-cased,
// every character other than a letter or digit made '_', then '_' (pg-sql:
// PG_SQL_); none for the plain auxiliary-machine.
func envPrefix(env string) string {
	if env == "" {
		return ""
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, env) + "_"
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseEnvironment reads an auxiliary machine's environment file: NAME=value
// lines (empty lines and #-comments skipped), names of letters, digits and
// '_' not starting with a digit, each once; values one line of printable
// text. Errors say file:line.
func parseEnvironment(data []byte, file string) ([]string, error) {
	if len(data) > maxEnvironment {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, maxEnvironment)
	}
	var vars []string
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		at := fmt.Sprintf("%s:%d: ", file, i+1)
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		switch {
		case !ok:
			return nil, errors.New(at + "expected NAME=value")
		case !envName.MatchString(name):
			return nil, fmt.Errorf("%sinvalid variable name %q", at, name)
		case seen[name]:
			return nil, fmt.Errorf("%s%s redefinition", at, name)
		case strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f || r == '\uFFFD' }):
			return nil, fmt.Errorf("%s%s: the value has control characters or invalid UTF-8", at, name)
		case len(vars) == maxEnvironmentVars:
			return nil, fmt.Errorf("%smore than %d variables", at, maxEnvironmentVars)
		}
		seen[name] = true
		vars = append(vars, name+"="+value)
	}
	return vars, nil
}

// auxRAM is what each auxiliary machine gets: its ram-minimum, plus an
// equal share of what --auxiliary-ram leaves beyond all their minimums,
// capped at its ram-maximum (never below 64 MiB, QEMU's floor here). It
// fails when the minimums do not fit (a controller that ignored
// auxiliary-ram).
func auxRAM(total uint64, hs []manifest.MachineHeader) ([]uint64, error) {
	var sum uint64
	for _, h := range hs {
		sum += h.RAMMinimum
	}
	if sum > total {
		return nil, fmt.Errorf("the auxiliary machines' ram-minimum add up to %d KiB, more than --auxiliary-ram %d KiB", sum, total)
	}
	share := (total - sum) / uint64(max(len(hs), 1))
	rams := make([]uint64, len(hs))
	for i, h := range hs {
		r := h.RAMMinimum + share
		if h.RAMMaximum > 0 && r > h.RAMMaximum {
			r = h.RAMMaximum
		}
		rams[i] = max(r, minMachineRAM)
	}
	return rams, nil
}

// auxiliaryNeeds are the CPUs and RAM a task's auxiliary machines take
// (admission): --auxiliary-cpu each, --auxiliary-ram in all (what they
// share, auxRAM).
func (a *Agent) auxiliaryNeeds(t *manifest.Task) (int, uint64) {
	reqs := auxiliaryRequests(t)
	if len(reqs) == 0 || a.Opts.AuxiliaryRAM == 0 {
		return 0, 0
	}
	return len(reqs) * auxCPUs(a.Opts), a.Opts.AuxiliaryRAM
}

// auxiliaryDirs are the directories of the auxiliary machines among aux
// that the task names: in use by its job from its start (before their
// locks are taken), so they are not offered again meanwhile.
func auxiliaryDirs(t *manifest.Task, aux []*inventory.Machine) []string {
	var dirs []string
	for _, r := range auxiliaryRequests(t) {
		if m := findMachineIf(aux, r.Machine, isAuxiliary); m != nil && !slices.Contains(dirs, m.Dir) {
			dirs = append(dirs, m.Dir)
		}
	}
	return dirs
}

// auxiliaryOffered are the offered auxiliary machines.
func auxiliaryOffered(offered map[string]*inventory.Machine) []*inventory.Machine {
	var ms []*inventory.Machine
	for _, m := range offered {
		if isAuxiliary(m.Header()) {
			ms = append(ms, m)
		}
	}
	return ms
}

// auxFailure is why a task's auxiliary machines did not all come up: the
// event for decideOutcome and the machine directory a machine backoff
// withholds.
type auxFailure struct {
	ev  event
	why string
	dir string
}

// auxGroup is a task's auxiliary machines and their private network, torn
// down together (after the build machine).
type auxGroup struct {
	net      auxNet
	sessions []*session
	undo     []func()
	// env is the auxiliary-environment value: every machine's variables,
	// prefixed by its environment name, in the task's order.
	env []string
}

func (g *auxGroup) push(f func()) { g.undo = append(g.undo, f) }

// teardown forces the auxiliary machines down and removes their snapshots,
// taps, bridge and locks; nil-safe.
func (g *auxGroup) teardown() {
	if g == nil {
		return
	}
	for i := len(g.sessions) - 1; i >= 0; i-- {
		g.sessions[i].teardown()
	}
	for i := len(g.undo) - 1; i >= 0; i-- {
		g.undo[i]()
	}
	g.sessions, g.undo = nil, nil
}

// buildNIC adds the build machine's second NIC, on the private bridge, and
// tells the guest its address (no DHCP there).
func (g *auxGroup) buildNIC(offset int) func(*machine.Config) {
	if g == nil {
		return nil
	}
	return func(cfg *machine.Config) {
		cfg.AuxTap, cfg.AuxMAC = g.net.BuildTap(), SlotMAC(cfg.Name+"/aux-nic", offset)
		cfg.OEMStrings = append(cfg.OEMStrings, "bbot.aux.ip="+g.net.withLen(g.net.Build()))
	}
}

// startAuxiliary boots the task's auxiliary machines, in the task's order,
// each until it uploaded its environment. On a failure everything started
// is torn down and the failure returned; with no auxiliary machines both
// results are nil.
func (a *Agent) startAuxiliary(ctx context.Context, t *task) (*auxGroup, *auxFailure) {
	reqs := auxiliaryRequests(t.task)
	if len(reqs) == 0 {
		return nil, nil
	}
	unknown := func(why string) (*auxGroup, *auxFailure) {
		return nil, &auxFailure{ev: evAuxiliaryUnknown, why: why + "; no machine was booted"}
	}
	if t.mach.NoVM {
		return unknown("--fake-machine runs no auxiliary machines")
	}
	if len(reqs) > maxAuxiliary {
		return unknown(fmt.Sprintf("the task names %d auxiliary machines, more than %d", len(reqs), maxAuxiliary))
	}
	ms := make([]*inventory.Machine, len(reqs))
	hs := make([]manifest.MachineHeader, len(reqs))
	for i, r := range reqs {
		m := findMachineIf(t.machines, r.Machine, isAuxiliary)
		if m == nil || !a.offerable(m.Header()) {
			return unknown(fmt.Sprintf("task for auxiliary machine %s (%s), which this agent did not offer", r.Machine, r.field()))
		}
		ms[i], hs[i] = m, m.Header()
	}
	rams, err := auxRAM(a.Opts.AuxiliaryRAM, hs)
	if err != nil {
		return unknown(err.Error())
	}
	n, err := planAuxNet(a.Opts, t.slot.plan)
	if err != nil {
		return nil, &auxFailure{ev: evHostFault, why: "auxiliary network: " + err.Error()}
	}
	g := &auxGroup{net: n}
	fail := func(f *auxFailure) (*auxGroup, *auxFailure) {
		g.teardown()
		return nil, f
	}
	// Each machine once, however often the task names it (flocks of one
	// process on two descriptors would wait for each other).
	locked := map[string]bool{}
	for _, m := range ms {
		if locked[m.Dir] {
			continue
		}
		uncover := heartOf(ctx).busy(lockWait + 10*time.Second)
		lock, err := inventory.LockMachineWait(ctx, m.Dir, lockWait)
		uncover()
		if err != nil {
			if ctx.Err() != nil {
				return fail(&auxFailure{ev: evInterrupted, why: interruptNote(ctx)})
			}
			return fail(&auxFailure{ev: evMachineFault, why: "auxiliary machine " + m.Header().Name + ": " + err.Error(), dir: m.Dir})
		}
		locked[m.Dir] = true
		g.push(func() { lock.Close() })
	}
	log := t.slot.log
	if err := machine.CreateBridge(n.Bridge(), n.withLen(n.Host())); err != nil {
		return fail(&auxFailure{ev: evHostFault, why: "auxiliary network bridge: " + err.Error()})
	}
	g.push(func() {
		if err := machine.DeleteTap(n.Bridge()); err != nil {
			log.Error("removing the auxiliary network bridge", "error", err)
		}
	})
	if err := machine.CreateTap(n.BuildTap(), n.Bridge()); err != nil {
		return fail(&auxFailure{ev: evHostFault, why: "build machine's auxiliary tap: " + err.Error()})
	}
	g.push(func() { machine.DeleteTap(n.BuildTap()) })

	for i, r := range reqs {
		k := i + 1
		s := a.auxSession(t, n, k, ms[i], rams[i])
		g.sessions = append(g.sessions, s)
		log.Info("starting auxiliary machine", "machine", r.Machine, "field", r.field(), "address", n.Aux(k), "ram", rams[i])
		rep := s.run(ctx)
		name := ms[i].Header().Name
		switch rep.ev {
		case evResult:
		case evStartupExhausted, evTimeout, evNoResult, evBadResult:
			why := fmt.Sprintf("auxiliary machine %s (%s) did not upload its environment: %s", name, r.field(), rep.why)
			if rep.ev == evTimeout {
				why = fmt.Sprintf("auxiliary machine %s (%s) did not upload its environment within --bootstrap-auxiliary (%s)", name, r.field(), a.Opts.BootstrapAuxiliary)
			}
			return fail(&auxFailure{ev: evAuxiliaryFault, why: why + s.consoleNote(), dir: ms[i].Dir})
		case evInterrupted:
			return fail(&auxFailure{ev: rep.ev, why: interruptNote(ctx)})
		default: // host faults, the snapshot's machine fault
			return fail(&auxFailure{ev: rep.ev, why: "auxiliary machine " + name + ": " + rep.why, dir: ms[i].Dir})
		}
		data, err := os.ReadFile(filepath.Join(s.put, rep.name))
		if err != nil {
			return fail(&auxFailure{ev: evHostFault, why: "reading the environment of auxiliary machine " + name + ": " + err.Error()})
		}
		vars, err := parseEnvironment(data, auxEnvironmentName)
		if err != nil {
			return fail(&auxFailure{ev: evAuxiliaryFault, why: fmt.Sprintf("auxiliary machine %s (%s) uploaded a bad environment: %v", name, r.field(), err), dir: ms[i].Dir})
		}
		for _, v := range vars {
			g.env = append(g.env, envPrefix(r.Env)+v)
		}
		log.Info("auxiliary machine up", "machine", name, "variables", len(vars))
	}
	return g, nil
}

// auxSession is the session of auxiliary machine k (1..9): the slot's VMs
// with the private network's addresses, its own run directory (VM record,
// sockets) and TFTP directories, and TFTP on an ephemeral port of the
// bridge's host address. The same confinement as a build: a secret prefix
// and the machine's own source address.
func (a *Agent) auxSession(t *task, n auxNet, k int, m *inventory.Machine, ram uint64) *session {
	base := t.slot.vms
	v := *base
	o := *base.Opts
	o.Bridge, o.RAM = n.Bridge(), ram
	v.Opts = &o
	v.runDir = auxRunDir(base.runDir, k)
	v.tap = n.Tap(k)
	v.GuestIP, v.GatewayIP = n.withLen(n.Aux(k)), n.Host().String()
	v.bind = net.JoinHostPort(n.Host().String(), "0")
	v.Log = t.slot.log.With("auxiliary", m.Header().Name)
	v.onHeld = nil
	get, put := auxTFTPDirs(t.slot.plan, k)
	name := m.Header().Name
	return &session{v: &v, mode: "auxiliary", cpus: auxCPUs(a.Opts), mc: m.Manifest.Machine, source: m.Bootstrapped,
		get: get, put: put, getFiles: map[string][]byte{}, names: []string{auxEnvironmentName},
		startup: a.Opts.BuildStartup, timeout: cmp.Or(a.Opts.BootstrapAuxiliary, defaultBootstrapAuxiliary), retries: a.Opts.BuildRetries,
		maxFile: maxEnvironment, maxTotal: 4 * maxEnvironment, entry: t.entry.ID, announceBound: true,
		tweak: func(cfg *machine.Config) { cfg.MAC = SlotMAC(fmt.Sprintf("%s/aux%d", name, k), base.offset) }}
}

// auxCPUs is --auxiliary-cpu (a Go caller's zero: 1, bbot's default).
func auxCPUs(o *Options) int { return max(o.AuxiliaryCPU, 1) }

// defaultBootstrapAuxiliary is bbot's --bootstrap-auxiliary, for a Go
// caller's zero.
const defaultBootstrapAuxiliary = 900 * time.Second

func auxRunDir(slotRun string, k int) string {
	return filepath.Join(slotRun, auxRunPrefix+strconv.Itoa(k))
}

// auxTFTPDirs are auxiliary machine k's TFTP directories, beside the
// slot's build get and put.
func auxTFTPDirs(p SlotPlan, k int) (get, put string) {
	dir := filepath.Dir(p.TFTPBuildGet)
	return filepath.Join(dir, fmt.Sprintf("a%d-get", k)), filepath.Join(dir, fmt.Sprintf("a%d-put", k))
}

// cleanAuxiliary removes what a crashed agent's auxiliary machines left in
// slot s: their QEMUs (by VM record), run and TFTP directories, and in
// bridge mode the slot's private bridge and taps (only this slot's names).
// Their snapshots are temporaries, which enumeration deletes.
func (a *Agent) cleanAuxiliary(s *slot) {
	for k := 1; k <= maxAuxiliary; k++ {
		run := auxRunDir(s.plan.RunDir, k)
		if _, err := os.Stat(run); err == nil {
			a.killLeftoversIn(&slot{plan: SlotPlan{RunDir: run}, log: s.log}, true)
			if err := fsx.RemoveOwned(s.plan.RunDir, run); err != nil {
				s.log.Warn("removing an auxiliary machine's run directory", "error", err)
			}
		}
		if s.plan.TFTPBuildGet != "" {
			get, put := auxTFTPDirs(s.plan, k)
			for _, d := range []string{get, put} {
				if err := fsx.RemoveOwned(a.Opts.TFTP, d); err != nil {
					s.log.Warn("removing an auxiliary machine's TFTP directory", "error", err)
				}
			}
		}
	}
	if a.Opts.Network != "bridge" || s.plan.Offset == 0 {
		return
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return
	}
	ours := auxNet{offset: s.plan.Offset}.interfaces()
	// Taps first, then the bridge they are on.
	slices.Reverse(ours)
	for _, name := range ours {
		if slices.ContainsFunc(ifs, func(i net.Interface) bool { return i.Name == name }) {
			if err := machine.DeleteTap(name); err != nil {
				s.log.Warn("removing an interface left by a previous agent", "interface", name, "error", err)
			} else {
				s.log.Warn("removed an interface left by a previous agent", "interface", name)
			}
		}
	}
}

// findMachineIf is the machine named name that ok accepts.
func findMachineIf(machines []*inventory.Machine, name string, ok func(manifest.MachineHeader) bool) *inventory.Machine {
	for _, m := range machines {
		if h := m.Header(); h.Name == name && ok(h) {
			return m
		}
	}
	return nil
}

// plans are the slots' address plans.
func (a *Agent) plans() []SlotPlan {
	ps := make([]SlotPlan, len(a.slots))
	for i, s := range a.slots {
		ps[i] = s.plan
	}
	return ps
}
