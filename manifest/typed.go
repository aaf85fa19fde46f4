package manifest

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// decoder walks one manifest's pairs and reports positioned errors.
type decoder struct {
	stream string // the stream's name for errors
	kind   string // "task", "machine header", ... for messages
	m      *Manifest
	seen   map[string]bool
}

func newDecoder(stream, kind string, m *Manifest) *decoder {
	return &decoder{stream: stream, kind: kind, m: m, seen: map[string]bool{}}
}

func (d *decoder) errName(nv NameValue, format string, args ...any) error {
	return &ParseError{Name: d.stream, Line: nv.NameLine, Column: nv.NameColumn, Description: fmt.Sprintf(format, args...)}
}

func (d *decoder) errValue(nv NameValue, format string, args ...any) error {
	return &ParseError{Name: d.stream, Line: nv.ValueLine, Column: nv.ValueColumn, Description: fmt.Sprintf(format, args...)}
}

func (d *decoder) errEnd(format string, args ...any) error {
	return &ParseError{Name: d.stream, Line: d.m.EndLine, Column: d.m.EndColumn, Description: fmt.Sprintf(format, args...)}
}

// once rejects a repeated single-valued name and an empty value.
func (d *decoder) once(nv NameValue) error {
	if d.seen[nv.Name] {
		return d.errName(nv, "%s redefinition", nv.Name)
	}
	d.seen[nv.Name] = true
	if nv.Value == "" {
		return d.errValue(nv, "empty %s", nv.Name)
	}
	return nil
}

func (d *decoder) unknown(nv NameValue) error {
	return d.errName(nv, "unknown name '%s' in %s manifest", nv.Name, d.kind)
}

func (d *decoder) require(names ...string) error {
	for _, n := range names {
		if !d.seen[n] {
			return d.errEnd("no %s specified", n)
		}
	}
	return nil
}

func (d *decoder) uint(nv NameValue) (uint64, error) {
	v, err := strconv.ParseUint(nv.Value, 10, 64)
	if err != nil || nv.Value[0] == '+' {
		return 0, d.errValue(nv, "invalid %s: unsigned integer expected", nv.Name)
	}
	return v, nil
}

// readManifests reads exactly n manifests (or at most n when atLeast < n).
func readManifests(r io.Reader, stream string, atLeast, atMost int) ([]*Manifest, error) {
	p := NewParser(r, stream)
	var ms []*Manifest
	for {
		m, err := ReadManifest(p)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
		if atMost > 0 && len(ms) > atMost {
			return nil, &ParseError{Name: stream, Line: m.EndLine, Column: m.EndColumn,
				Description: fmt.Sprintf("single manifest expected, got %d", len(ms))}
		}
	}
	if len(ms) < atLeast {
		line, col := uint64(1), uint64(1)
		if len(ms) > 0 {
			line, col = ms[len(ms)-1].EndLine, ms[len(ms)-1].EndColumn
		}
		return nil, &ParseError{Name: stream, Line: line, Column: col, Description: "start of manifest expected"}
	}
	return ms, nil
}

// --- machine header -------------------------------------------------------

// MachineHeader describes a machine in a task request (and starts the machine
// manifest on disk).
type MachineHeader struct {
	ID, Name, Summary string
	Role              string // "build" (default when empty) or "auxiliary"
	RAMMinimum        uint64 // KiB; 0 = unspecified
	RAMMaximum        uint64 // KiB; 0 = unspecified
}

var machineHeaderOrder = []string{"id", "name", "summary", "role", "ram-minimum", "ram-maximum"}

// decodeHeaderField handles a header name; it returns false for other names.
func (h *MachineHeader) decodeField(d *decoder, nv NameValue) (bool, error) {
	if !slices.Contains(machineHeaderOrder, nv.Name) {
		return false, nil
	}
	if err := d.once(nv); err != nil {
		return true, err
	}
	var err error
	switch nv.Name {
	case "id":
		h.ID = nv.Value
	case "name":
		h.Name = nv.Value
		if strings.ContainsAny(nv.Value, " \t\n/") {
			err = d.errValue(nv, "invalid machine name '%s'", nv.Value)
		}
	case "summary":
		h.Summary = nv.Value
	case "role":
		if nv.Value != "build" && nv.Value != "auxiliary" {
			err = d.errValue(nv, "invalid machine role '%s'", nv.Value)
		}
		h.Role = nv.Value
	case "ram-minimum":
		h.RAMMinimum, err = d.uint(nv)
	case "ram-maximum":
		h.RAMMaximum, err = d.uint(nv)
	}
	return true, err
}

func (h *MachineHeader) check(d *decoder) error {
	if err := d.require("id", "name", "summary"); err != nil {
		return err
	}
	if h.RAMMinimum != 0 && h.RAMMaximum != 0 && h.RAMMinimum > h.RAMMaximum {
		return d.errEnd("ram-minimum exceeds ram-maximum")
	}
	return nil
}

func decodeMachineHeader(stream string, m *Manifest) (MachineHeader, error) {
	var h MachineHeader
	d := newDecoder(stream, "machine header", m)
	for _, nv := range m.Pairs {
		ok, err := h.decodeField(d, nv)
		if err != nil {
			return h, err
		}
		if !ok {
			return h, d.unknown(nv)
		}
	}
	return h, h.check(d)
}

// ParseMachineHeader parses a single machine header manifest.
func ParseMachineHeader(r io.Reader, stream string) (MachineHeader, error) {
	ms, err := readManifests(r, stream, 1, 1)
	if err != nil {
		return MachineHeader{}, err
	}
	return decodeMachineHeader(stream, ms[0])
}

// Pairs returns the header's pairs in brep's order.
func (h MachineHeader) Pairs() []NameValue {
	p := []NameValue{{Name: "id", Value: h.ID}, {Name: "name", Value: h.Name}, {Name: "summary", Value: h.Summary}}
	if h.Role != "" {
		p = append(p, NameValue{Name: "role", Value: h.Role})
	}
	if h.RAMMinimum != 0 {
		p = append(p, NameValue{Name: "ram-minimum", Value: strconv.FormatUint(h.RAMMinimum, 10)})
	}
	if h.RAMMaximum != 0 {
		p = append(p, NameValue{Name: "ram-maximum", Value: strconv.FormatUint(h.RAMMaximum, 10)})
	}
	return p
}

// --- machine ----------------------------------------------------------------

// Machine is the machine manifest stored with a machine image.
type Machine struct {
	MachineHeader
	Type    string // "kvm" or "nspawn"
	MAC     string
	Options string // extra machine-type options (QEMU arguments)
	Changes string
}

func decodeMachine(stream string, m *Manifest) (Machine, error) {
	var mc Machine
	d := newDecoder(stream, "machine", m)
	for _, nv := range m.Pairs {
		ok, err := mc.decodeField(d, nv)
		if err != nil {
			return mc, err
		}
		if ok {
			continue
		}
		switch nv.Name {
		case "type":
			if err := d.once(nv); err != nil {
				return mc, err
			}
			if nv.Value != "kvm" && nv.Value != "nspawn" {
				return mc, d.errValue(nv, "unknown machine type '%s'", nv.Value)
			}
			mc.Type = nv.Value
		case "mac":
			if err := d.once(nv); err != nil {
				return mc, err
			}
			if !validMAC(nv.Value) {
				return mc, d.errValue(nv, "invalid mac address '%s'", nv.Value)
			}
			mc.MAC = nv.Value
		case "options":
			if err := d.once(nv); err != nil {
				return mc, err
			}
			mc.Options = nv.Value
		case "changes":
			if err := d.once(nv); err != nil {
				return mc, err
			}
			mc.Changes = nv.Value
		default:
			return mc, d.unknown(nv)
		}
	}
	if err := mc.check(d); err != nil {
		return mc, err
	}
	return mc, d.require("type")
}

func validMAC(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 {
			return false
		}
		if _, err := strconv.ParseUint(p, 16, 8); err != nil {
			return false
		}
	}
	return true
}

// ParseMachine parses a single machine manifest.
func ParseMachine(r io.Reader, stream string) (Machine, error) {
	ms, err := readManifests(r, stream, 1, 1)
	if err != nil {
		return Machine{}, err
	}
	return decodeMachine(stream, ms[0])
}

// Pairs returns the machine manifest's pairs.
func (m Machine) Pairs() []NameValue {
	p := m.MachineHeader.Pairs()
	p = append(p, NameValue{Name: "type", Value: m.Type})
	for _, f := range []NameValue{{Name: "mac", Value: m.MAC}, {Name: "options", Value: m.Options}, {Name: "changes", Value: m.Changes}} {
		if f.Value != "" {
			p = append(p, f)
		}
	}
	return p
}

// --- toolchain and bootstrap -----------------------------------------------

// Toolchain identifies the toolchain a machine was bootstrapped with.
type Toolchain struct{ ID string }

func decodeToolchain(stream string, m *Manifest) (Toolchain, error) {
	var t Toolchain
	d := newDecoder(stream, "toolchain", m)
	for _, nv := range m.Pairs {
		if nv.Name != "id" {
			return t, d.unknown(nv)
		}
		// Empty is allowed: --toolchain-id defaults to empty.
		if d.seen[nv.Name] {
			return t, d.errName(nv, "id redefinition")
		}
		d.seen[nv.Name] = true
		t.ID = nv.Value
	}
	return t, d.require("id")
}

// Pairs returns the toolchain manifest's pairs.
func (t Toolchain) Pairs() []NameValue { return []NameValue{{Name: "id", Value: t.ID}} }

// PackageVersion is one "<package>-version" value of a bootstrap manifest.
type PackageVersion struct {
	Package string
	Version StandardVersion
}

// Bootstrap is what a worker reports after bootstrapping: the versions of
// what it installed, bbot first.
type Bootstrap struct{ Versions []PackageVersion }

// Version returns the version of pkg, if reported.
func (b Bootstrap) Version(pkg string) (StandardVersion, bool) {
	for _, v := range b.Versions {
		if v.Package == pkg {
			return v.Version, true
		}
	}
	return StandardVersion{}, false
}

func decodeBootstrap(stream string, m *Manifest) (Bootstrap, error) {
	var b Bootstrap
	d := newDecoder(stream, "bootstrap", m)
	for _, nv := range m.Pairs {
		pkg, ok := strings.CutSuffix(nv.Name, "-version")
		if !ok || pkg == "" {
			return b, d.unknown(nv)
		}
		if err := d.once(nv); err != nil {
			return b, err
		}
		v, err := ParseStandardVersion(nv.Value)
		if err != nil {
			return b, d.errValue(nv, "invalid %s: %v", nv.Name, err)
		}
		b.Versions = append(b.Versions, PackageVersion{pkg, v})
	}
	return b, d.require("bbot-version")
}

// ParseBootstrap parses a single bootstrap manifest.
func ParseBootstrap(r io.Reader, stream string) (Bootstrap, error) {
	ms, err := readManifests(r, stream, 1, 1)
	if err != nil {
		return Bootstrap{}, err
	}
	return decodeBootstrap(stream, ms[0])
}

// Pairs returns the bootstrap manifest's pairs.
func (b Bootstrap) Pairs() []NameValue {
	p := make([]NameValue, len(b.Versions))
	for i, v := range b.Versions {
		p[i] = NameValue{Name: v.Package + "-version", Value: v.Version.String()}
	}
	return p
}

// BootstrappedMachine is the manifest stored in a bootstrapped snapshot: the
// machine, the toolchain and the bootstrap manifests in one stream.
type BootstrappedMachine struct {
	Machine   Machine
	Toolchain Toolchain
	Bootstrap Bootstrap
}

// ParseBootstrappedMachine parses the three-manifest stream.
func ParseBootstrappedMachine(r io.Reader, stream string) (BootstrappedMachine, error) {
	var bm BootstrappedMachine
	ms, err := readManifests(r, stream, 3, 3)
	if err != nil {
		return bm, err
	}
	if bm.Machine, err = decodeMachine(stream, ms[0]); err != nil {
		return bm, err
	}
	if bm.Toolchain, err = decodeToolchain(stream, ms[1]); err != nil {
		return bm, err
	}
	bm.Bootstrap, err = decodeBootstrap(stream, ms[2])
	return bm, err
}

// Serialize writes the bootstrapped machine stream.
func (bm BootstrappedMachine) Serialize(w io.Writer) error {
	return WriteStream(w, "", bm.Machine.Pairs(), bm.Toolchain.Pairs(), bm.Bootstrap.Pairs())
}

// --- task request ------------------------------------------------------------

// TaskRequest is what an agent POSTs to ask for work.
type TaskRequest struct {
	Agent            string
	ToolchainName    string
	ToolchainVersion StandardVersion
	InteractiveMode  string // "", "false", "true" or "both"
	InteractiveLogin string
	Fingerprint      string
	AuxiliaryRAM     uint64 // KiB; 0 = unspecified
	Machines         []MachineHeader
}

// ParseTaskRequest parses a task request stream (strict: unknown names are
// errors, as in brep).
func ParseTaskRequest(r io.Reader, stream string) (TaskRequest, error) {
	var tr TaskRequest
	ms, err := readManifests(r, stream, 1, 0)
	if err != nil {
		return tr, err
	}
	d := newDecoder(stream, "task request", ms[0])
	for _, nv := range ms[0].Pairs {
		if err := d.once(nv); err != nil {
			return tr, err
		}
		switch nv.Name {
		case "agent":
			tr.Agent = nv.Value
		case "toolchain-name":
			tr.ToolchainName = nv.Value
		case "toolchain-version":
			if tr.ToolchainVersion, err = ParseStandardVersion(nv.Value); err != nil {
				return tr, d.errValue(nv, "invalid toolchain-version: %v", err)
			}
		case "interactive-mode":
			if !slices.Contains([]string{"false", "true", "both"}, nv.Value) {
				return tr, d.errValue(nv, "invalid interactive-mode '%s'", nv.Value)
			}
			tr.InteractiveMode = nv.Value
		case "interactive-login":
			tr.InteractiveLogin = nv.Value
		case "fingerprint":
			if !isLowerHex(nv.Value, 64) {
				return tr, d.errValue(nv, "invalid fingerprint '%s'", nv.Value)
			}
			tr.Fingerprint = nv.Value
		case "auxiliary-ram":
			if tr.AuxiliaryRAM, err = d.uint(nv); err != nil {
				return tr, err
			}
		default:
			return tr, d.unknown(nv)
		}
	}
	if err := d.require("agent", "toolchain-name", "toolchain-version"); err != nil {
		return tr, err
	}
	if len(ms) == 1 {
		return tr, d.errEnd("no build machines specified")
	}
	for _, m := range ms[1:] {
		h, err := decodeMachineHeader(stream, m)
		if err != nil {
			return tr, err
		}
		tr.Machines = append(tr.Machines, h)
	}
	return tr, nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// Pairs returns the task request's own pairs in brep's order.
func (tr TaskRequest) Pairs() []NameValue {
	p := []NameValue{
		{Name: "agent", Value: tr.Agent},
		{Name: "toolchain-name", Value: tr.ToolchainName},
		{Name: "toolchain-version", Value: tr.ToolchainVersion.String()},
	}
	opt := func(n, v string) {
		if v != "" {
			p = append(p, NameValue{Name: n, Value: v})
		}
	}
	opt("interactive-mode", tr.InteractiveMode)
	opt("interactive-login", tr.InteractiveLogin)
	opt("fingerprint", tr.Fingerprint)
	if tr.AuxiliaryRAM != 0 {
		opt("auxiliary-ram", strconv.FormatUint(tr.AuxiliaryRAM, 10))
	}
	return p
}

// Serialize writes the request followed by one header per machine.
func (tr TaskRequest) Serialize(w io.Writer) error {
	ms := [][]NameValue{tr.Pairs()}
	for _, h := range tr.Machines {
		ms = append(ms, h.Pairs())
	}
	return WriteStream(w, "", ms...)
}

// --- task ----------------------------------------------------------------------

// TaskOrder is brep's order of the task manifest's names; used only to place
// values the agent adds.
var TaskOrder = []string{
	"name", "version", "repository-url", "repository-type", "trust", "requires",
	"tests", "examples", "benchmarks", "dependency-checksum", "machine",
	"auxiliary-machine", "target", "environment", "auxiliary-environment",
	"target-config", "package-config", "host", "warning-regex", "interactive",
	"worker-checksum",
}

// Task is the build task as the controller sent it. It is parsed leniently:
// every pair, known or not, is kept in place and handed to the worker.
type Task struct{ Fields Fields }

func (t *Task) Name() string    { return t.Fields.Value("name") }
func (t *Task) Version() string { return t.Fields.Value("version") }
func (t *Task) Machine() string { return t.Fields.Value("machine") }

// Interactive is the task's interactive breakpoint (none, error, warning
// or a worker step id); "" for a task without one.
func (t *Task) Interactive() string { return t.Fields.Value("interactive") }

func decodeTask(stream string, m *Manifest) (*Task, error) {
	d := newDecoder(stream, "task", m)
	single := []string{"name", "version", "repository-url", "repository-type",
		"dependency-checksum", "machine", "target", "environment",
		"auxiliary-environment", "target-config", "package-config", "host",
		"warning-regex", "interactive", "worker-checksum"}
	for _, nv := range m.Pairs {
		if !slices.Contains(single, nv.Name) {
			continue // repeatable or unknown: kept as is
		}
		if err := d.once(nv); err != nil {
			return nil, err
		}
		switch nv.Name {
		case "repository-type":
			if !slices.Contains([]string{"pkg", "git", "dir"}, nv.Value) {
				return nil, d.errValue(nv, "invalid repository-type '%s'", nv.Value)
			}
		case "host":
			if nv.Value != "true" && nv.Value != "false" {
				return nil, d.errValue(nv, "invalid host value '%s'", nv.Value)
			}
		}
	}
	if err := d.require("name", "version", "repository-url", "machine", "target"); err != nil {
		return nil, err
	}
	return &Task{Fields: slices.Clone(m.Pairs)}, nil
}

// ParseTask parses a single task manifest.
func ParseTask(r io.Reader, stream string) (*Task, error) {
	ms, err := readManifests(r, stream, 1, 1)
	if err != nil {
		return nil, err
	}
	return decodeTask(stream, ms[0])
}

// Serialize writes the task as a single-manifest stream.
func (t *Task) Serialize(w io.Writer) error { return WriteStream(w, "", t.Fields) }

// --- task response -------------------------------------------------------------

// TaskResponseOrder is brep's order of the response header's names.
var TaskResponseOrder = []string{"session", "challenge", "result-url", "agent-checksum"}

// TaskResponse is the controller's answer to a task request. An empty
// Session means no task. Parsed leniently.
type TaskResponse struct {
	Fields Fields // the header's pairs as sent
	Task   *Task  // nil when there is no task
}

func (r *TaskResponse) Session() string       { return r.Fields.Value("session") }
func (r *TaskResponse) Challenge() string     { return r.Fields.Value("challenge") }
func (r *TaskResponse) ResultURL() string     { return r.Fields.Value("result-url") }
func (r *TaskResponse) AgentChecksum() string { return r.Fields.Value("agent-checksum") }

// UploadURLs returns the "<type>-upload-url" values by type, in order.
func (r *TaskResponse) UploadURLs() [][2]string {
	var u [][2]string
	for _, nv := range r.Fields {
		if t, ok := strings.CutSuffix(nv.Name, "-upload-url"); ok && t != "" {
			u = append(u, [2]string{t, nv.Value})
		}
	}
	return u
}

// ParseTaskResponse parses a task response stream.
func ParseTaskResponse(r io.Reader, stream string) (*TaskResponse, error) {
	ms, err := readManifests(r, stream, 1, 2)
	if err != nil {
		return nil, err
	}
	m := ms[0]
	d := newDecoder(stream, "task response", m)
	for _, nv := range m.Pairs {
		switch nv.Name {
		case "session":
			if d.seen[nv.Name] {
				return nil, d.errName(nv, "session redefinition")
			}
			d.seen[nv.Name] = true
		case "challenge", "result-url", "agent-checksum":
			if err := d.once(nv); err != nil {
				return nil, err
			}
		}
	}
	if err := d.require("session"); err != nil {
		return nil, err
	}
	resp := &TaskResponse{Fields: slices.Clone(m.Pairs)}
	if resp.Session() == "" {
		if len(ms) > 1 {
			return nil, d.errEnd("unexpected task manifest for empty session")
		}
		return resp, nil
	}
	if err := d.require("result-url"); err != nil {
		return nil, err
	}
	if len(ms) < 2 {
		return nil, d.errEnd("task manifest expected")
	}
	if resp.Task, err = decodeTask(stream, ms[1]); err != nil {
		return nil, err
	}
	return resp, nil
}

// Serialize writes the response (and its task, if any).
func (r *TaskResponse) Serialize(w io.Writer) error {
	if r.Task == nil {
		return WriteStream(w, "", r.Fields)
	}
	return WriteStream(w, "", r.Fields, r.Task.Fields)
}

// --- result ----------------------------------------------------------------------

// Result statuses, in brep's order of severity.
var ResultStatuses = []string{"success", "warning", "error", "abort", "abnormal", "skip", "interrupt"}

// OperationResult is one step's status and log.
type OperationResult struct {
	Operation string
	Status    string
	Log       string
}

// Result is a build result. What the worker uploads is parsed leniently
// (unknown names kept in Unknown for diagnostics); what is sent to the
// controller is only brep's names, in brep's order.
type Result struct {
	Name, Version      string
	Status             string
	Operations         []OperationResult
	DependencyChecksum string
	WorkerChecksum     string
	Unknown            []NameValue
}

func validStatus(s string) bool { return slices.Contains(ResultStatuses, s) }

// WorseStatus returns the more severe of two statuses (for success through
// abnormal; skip and interrupt are not ranked against the others).
func WorseStatus(a, b string) string {
	if slices.Index(ResultStatuses, b) > slices.Index(ResultStatuses, a) {
		return b
	}
	return a
}

func decodeResult(stream string, m *Manifest, strict bool) (Result, error) {
	var res Result
	d := newDecoder(stream, "result", m)
	op := func(name string) *OperationResult {
		for i := range res.Operations {
			if res.Operations[i].Operation == name {
				return &res.Operations[i]
			}
		}
		return nil
	}
	for _, nv := range m.Pairs {
		switch nv.Name {
		case "name", "version", "status", "dependency-checksum", "worker-checksum":
			if err := d.once(nv); err != nil {
				return res, err
			}
			switch nv.Name {
			case "name":
				res.Name = nv.Value
			case "version":
				res.Version = nv.Value
			case "status":
				if !validStatus(nv.Value) {
					return res, d.errValue(nv, "invalid status '%s'", nv.Value)
				}
				res.Status = nv.Value
			case "dependency-checksum":
				res.DependencyChecksum = nv.Value
			case "worker-checksum":
				res.WorkerChecksum = nv.Value
			}
			continue
		}
		if o, ok := strings.CutSuffix(nv.Name, "-status"); ok && o != "" {
			if err := d.once(nv); err != nil {
				return res, err
			}
			if !validStatus(nv.Value) {
				return res, d.errValue(nv, "invalid %s '%s'", nv.Name, nv.Value)
			}
			res.Operations = append(res.Operations, OperationResult{Operation: o, Status: nv.Value})
			continue
		}
		if o, ok := strings.CutSuffix(nv.Name, "-log"); ok && o != "" {
			if d.seen[nv.Name] {
				return res, d.errName(nv, "%s redefinition", nv.Name)
			}
			d.seen[nv.Name] = true
			r := op(o)
			if r == nil {
				return res, d.errName(nv, "%s without %s-status", nv.Name, o)
			}
			r.Log = nv.Value
			continue
		}
		if strict {
			return res, d.unknown(nv)
		}
		res.Unknown = append(res.Unknown, nv)
	}
	return res, d.require("name", "version", "status")
}

// ParseResult parses a single result manifest leniently (as uploaded by a
// worker): unknown names are kept in Result.Unknown.
func ParseResult(r io.Reader, stream string) (Result, error) {
	ms, err := readManifests(r, stream, 1, 1)
	if err != nil {
		return Result{}, err
	}
	return decodeResult(stream, ms[0], false)
}

// Pairs returns the result's pairs in brep's order: statuses, then logs.
func (res Result) Pairs() []NameValue {
	p := []NameValue{{Name: "name", Value: res.Name}, {Name: "version", Value: res.Version}, {Name: "status", Value: res.Status}}
	for _, o := range res.Operations {
		p = append(p, NameValue{Name: o.Operation + "-status", Value: o.Status})
	}
	for _, o := range res.Operations {
		if o.Log != "" {
			p = append(p, NameValue{Name: o.Operation + "-log", Value: o.Log})
		}
	}
	if res.DependencyChecksum != "" {
		p = append(p, NameValue{Name: "dependency-checksum", Value: res.DependencyChecksum})
	}
	if res.WorkerChecksum != "" {
		p = append(p, NameValue{Name: "worker-checksum", Value: res.WorkerChecksum})
	}
	return p
}

// Serialize writes the result as a single-manifest stream.
func (res Result) Serialize(w io.Writer) error { return WriteStream(w, "", res.Pairs()) }

// --- result request ----------------------------------------------------------------

// ResultRequest is what the agent POSTs to the result URL.
type ResultRequest struct {
	Session       string
	Challenge     string // base64 signature, wrapped at 76 columns
	AgentChecksum string
	Result        Result
}

// ParseResultRequest parses a result request stream strictly (as brep does).
func ParseResultRequest(r io.Reader, stream string) (ResultRequest, error) {
	var rr ResultRequest
	ms, err := readManifests(r, stream, 2, 2)
	if err != nil {
		return rr, err
	}
	d := newDecoder(stream, "result request", ms[0])
	for _, nv := range ms[0].Pairs {
		if err := d.once(nv); err != nil {
			return rr, err
		}
		switch nv.Name {
		case "session":
			rr.Session = nv.Value
		case "challenge":
			rr.Challenge = nv.Value
		case "agent-checksum":
			rr.AgentChecksum = nv.Value
		default:
			return rr, d.unknown(nv)
		}
	}
	if err := d.require("session"); err != nil {
		return rr, err
	}
	rr.Result, err = decodeResult(stream, ms[1], true)
	return rr, err
}

// Pairs returns the request's own pairs in brep's order.
func (rr ResultRequest) Pairs() []NameValue {
	p := []NameValue{{Name: "session", Value: rr.Session}}
	if rr.Challenge != "" {
		p = append(p, NameValue{Name: "challenge", Value: rr.Challenge})
	}
	if rr.AgentChecksum != "" {
		p = append(p, NameValue{Name: "agent-checksum", Value: rr.AgentChecksum})
	}
	return p
}

// Serialize writes the request followed by the result.
func (rr ResultRequest) Serialize(w io.Writer) error {
	return WriteStream(w, "", rr.Pairs(), rr.Result.Pairs())
}
