package seccomp

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Offsets of the fields of struct seccomp_data, the input of a seccomp filter.
const (
	offNr   = 0  // int nr
	offArch = 4  // __u32 arch
	offArgs = 16 // __u64 args[6]
)

// maxInsns is BPF_MAXINSNS, the kernel's limit on the length of one filter.
const maxInsns = 4096

var (
	retAllow = bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
	retKill  = bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS}
	retEPERM = retErrno(unix.EPERM)
)

// retErrno returns an instruction that fails the syscall with e.
func retErrno(e unix.Errno) bpf.RetConstant {
	return bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(e)&unix.SECCOMP_RET_DATA}
}

// policy is the filter for one architecture before it is compiled.
type policy struct {
	// arch is the AUDIT_ARCH_* value the filter accepts; a syscall made with
	// any other architecture kills the process.
	arch uint32
	// badBits are syscall-number bits that are refused with EPERM whatever
	// the rest of the number is (the x32 ABI bit on amd64). Zero means none.
	badBits uint32
	// allow lists the syscalls allowed with any arguments.
	allow []uint32
	// rules maps a syscall number to a block that inspects its arguments.
	// Every path through a block ends in a return. A syscall must not be
	// both in allow and in rules.
	rules map[uint32][]bpf.Instruction
}

// compiled and compiledClone3 are the cached filters for the running architecture, without and
// with clone3 allowed. Install and Program share them, so each program is assembled once per
// process.
var (
	compiled       = sync.OnceValues(func() ([]unix.SockFilter, error) { return build(Options{}) })
	compiledClone3 = sync.OnceValues(func() ([]unix.SockFilter, error) { return build(Options{AllowClone3: true}) })
)

func build(o Options) ([]unix.SockFilter, error) {
	p, err := nativePolicy()
	if err != nil {
		return nil, err
	}
	if o.AllowClone3 {
		delete(p.rules, unix.SYS_CLONE3)
		p.allow = append(p.allow, unix.SYS_CLONE3)
	}
	return compile(p)
}

// Program returns the compiled classic-BPF filter for the running
// architecture (amd64 or arm64). On other architectures it returns an error
// wrapping errors.ErrUnsupported. The caller owns the returned slice.
func Program() ([]unix.SockFilter, error) {
	prog, err := compiled()
	if err != nil {
		return nil, err
	}
	return slices.Clone(prog), nil
}

// compile assembles p into a filter:
//
//	ld [arch]; jeq p.arch, +1; ret KILL_PROCESS
//	ld [nr]; jset p.badBits → ret EPERM
//	binary search over syscall-number intervals → allow, EPERM or an argument block
func compile(p policy) ([]unix.SockFilter, error) {
	ivs, err := intervals(p)
	if err != nil {
		return nil, err
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: p.arch, SkipTrue: 1},
		retKill,
		bpf.LoadAbsolute{Off: offNr, Size: 4},
	}
	if p.badBits != 0 {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: p.badBits, SkipFalse: 1},
			retEPERM,
		)
	}
	prog = append(prog, dispatch(ivs)...)
	if len(prog) > maxInsns {
		return nil, fmt.Errorf("filter has %d instructions, more than the kernel's limit of %d", len(prog), maxInsns)
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("assemble filter: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// interval is a run of syscall numbers, from start up to the next interval's
// start, that share one action.
type interval struct {
	start uint32
	code  []bpf.Instruction
}

// intervals splits the whole 32-bit syscall-number space into intervals,
// sorted by start, merging neighbours whose action is the same single return.
// Numbers p does not mention get EPERM.
func intervals(p policy) ([]interval, error) {
	type entry struct {
		nr   uint32
		code []bpf.Instruction
	}
	entries := make([]entry, 0, len(p.allow)+len(p.rules))
	allowCode := []bpf.Instruction{retAllow}
	for _, nr := range p.allow {
		entries = append(entries, entry{nr, allowCode})
	}
	for nr, code := range p.rules {
		if len(code) == 0 {
			return nil, fmt.Errorf("syscall %d has an empty rule", nr)
		}
		entries = append(entries, entry{nr, code})
	}
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.nr, b.nr) })
	for i := 1; i < len(entries); i++ {
		if entries[i].nr == entries[i-1].nr {
			return nil, fmt.Errorf("syscall %d is listed twice (allowed or with a rule)", entries[i].nr)
		}
	}
	if n := len(entries); n > 0 && entries[n-1].nr == math.MaxUint32 {
		return nil, errors.New("syscall number 0xffffffff cannot be allowed")
	}

	deny := []bpf.Instruction{retEPERM}
	var ivs []interval
	push := func(start uint32, code []bpf.Instruction) {
		if n := len(ivs); n > 0 && sameReturn(ivs[n-1].code, code) {
			return
		}
		ivs = append(ivs, interval{start: start, code: code})
	}
	next := uint32(0)
	for _, e := range entries {
		if e.nr > next {
			push(next, deny)
		}
		push(e.nr, e.code)
		next = e.nr + 1
	}
	push(next, deny)
	return ivs, nil
}

// sameReturn reports whether a and b are the same single return instruction,
// so that adjacent intervals using them can be merged.
func sameReturn(a, b []bpf.Instruction) bool {
	if len(a) != 1 || len(b) != 1 {
		return false
	}
	ra, okA := a[0].(bpf.RetConstant)
	rb, okB := b[0].(bpf.RetConstant)
	return okA && okB && ra == rb
}

// dispatch emits a balanced binary search over ivs on the syscall number in
// the accumulator. Every path ends in one of the intervals' code, so subtrees
// are self-contained and can simply be concatenated. Conditional jumps reach
// at most 255 instructions, so a left subtree longer than that is skipped
// with an unconditional jump, whose offset is 32 bits.
func dispatch(ivs []interval) []bpf.Instruction {
	if len(ivs) == 1 {
		return slices.Clone(ivs[0].code)
	}
	mid := len(ivs) / 2
	left, right := dispatch(ivs[:mid]), dispatch(ivs[mid:])
	k := ivs[mid].start

	out := make([]bpf.Instruction, 0, 2+len(left)+len(right))
	if len(left) <= math.MaxUint8 {
		out = append(out, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: k, SkipTrue: uint8(len(left))})
	} else {
		out = append(out,
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: k, SkipFalse: 1},
			bpf.Jump{Skip: uint32(len(left))},
		)
	}
	out = append(out, left...)
	return append(out, right...)
}

// block assembles a short, self-contained piece of filter whose conditional
// jumps name forward targets by label instead of counting instructions.
// The zero value is ready to use.
type block struct {
	insns  []bpf.Instruction
	labels map[string]int
	jumps  []pendingJump
}

// pendingJump is a conditional jump at insns[at] whose targets are labels;
// an empty label means the next instruction.
type pendingJump struct {
	at              int
	ifTrue, ifFalse string
}

func (b *block) add(insns ...bpf.Instruction) { b.insns = append(b.insns, insns...) }

// label names the position of the next instruction.
func (b *block) label(name string) {
	if b.labels == nil {
		b.labels = make(map[string]int)
	}
	b.labels[name] = len(b.insns)
}

// jumpIf compares the accumulator with val and continues at label ifTrue or
// ifFalse.
func (b *block) jumpIf(cond bpf.JumpTest, val uint32, ifTrue, ifFalse string) {
	b.jumps = append(b.jumps, pendingJump{at: len(b.insns), ifTrue: ifTrue, ifFalse: ifFalse})
	b.add(bpf.JumpIf{Cond: cond, Val: val})
}

// assemble resolves the labels and returns the instructions.
func (b *block) assemble() ([]bpf.Instruction, error) {
	skip := func(at int, name string) (uint8, error) {
		if name == "" {
			return 0, nil
		}
		to, ok := b.labels[name]
		if !ok || to >= len(b.insns) {
			return 0, fmt.Errorf("jump to label %q, which labels no instruction", name)
		}
		d := to - at - 1
		if d < 0 || d > math.MaxUint8 {
			return 0, fmt.Errorf("jump to label %q is out of range (%d instructions)", name, d)
		}
		return uint8(d), nil
	}
	if len(b.insns) == 0 {
		return nil, errors.New("empty block")
	}
	out := slices.Clone(b.insns)
	for _, j := range b.jumps {
		ji := out[j.at].(bpf.JumpIf)
		var err error
		if ji.SkipTrue, err = skip(j.at, j.ifTrue); err != nil {
			return nil, err
		}
		if ji.SkipFalse, err = skip(j.at, j.ifFalse); err != nil {
			return nil, err
		}
		out[j.at] = ji
	}
	if _, ok := out[len(out)-1].(bpf.RetConstant); !ok {
		return nil, errors.New("block does not end in a return")
	}
	return out, nil
}
