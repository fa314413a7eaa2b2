//go:build linux && (amd64 || arm64)

package seccomp

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Filter return values, as the kernel sees them.
const (
	allow  = unix.SECCOMP_RET_ALLOW
	kill   = unix.SECCOMP_RET_KILL_PROCESS
	eperm  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	enosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
)

// namedSyscall is a syscall number with a name for test messages.
type namedSyscall struct {
	name string
	nr   uint32
}

// deniedSyscalls must get EPERM whatever their arguments. archDenied adds
// the architecture-specific ones.
var deniedSyscalls = []namedSyscall{
	{"acct", unix.SYS_ACCT},
	{"add_key", unix.SYS_ADD_KEY},
	{"adjtimex", unix.SYS_ADJTIMEX},
	{"bpf", unix.SYS_BPF},
	{"chroot", unix.SYS_CHROOT},
	{"clock_adjtime", unix.SYS_CLOCK_ADJTIME},
	{"clock_settime", unix.SYS_CLOCK_SETTIME},
	{"delete_module", unix.SYS_DELETE_MODULE},
	{"fanotify_init", unix.SYS_FANOTIFY_INIT},
	{"finit_module", unix.SYS_FINIT_MODULE},
	{"fsconfig", unix.SYS_FSCONFIG},
	{"fsmount", unix.SYS_FSMOUNT},
	{"fsopen", unix.SYS_FSOPEN},
	{"fspick", unix.SYS_FSPICK},
	{"get_mempolicy", unix.SYS_GET_MEMPOLICY},
	{"init_module", unix.SYS_INIT_MODULE},
	{"io_uring_enter", unix.SYS_IO_URING_ENTER},
	{"io_uring_register", unix.SYS_IO_URING_REGISTER},
	{"io_uring_setup", unix.SYS_IO_URING_SETUP},
	{"kcmp", unix.SYS_KCMP},
	{"kexec_file_load", unix.SYS_KEXEC_FILE_LOAD},
	{"kexec_load", unix.SYS_KEXEC_LOAD},
	{"keyctl", unix.SYS_KEYCTL},
	{"lookup_dcookie", unix.SYS_LOOKUP_DCOOKIE},
	{"lsm_set_self_attr", unix.SYS_LSM_SET_SELF_ATTR},
	{"mbind", unix.SYS_MBIND},
	{"mount", unix.SYS_MOUNT},
	{"mount_setattr", unix.SYS_MOUNT_SETATTR},
	{"move_mount", unix.SYS_MOVE_MOUNT},
	{"name_to_handle_at", unix.SYS_NAME_TO_HANDLE_AT},
	{"nfsservctl", unix.SYS_NFSSERVCTL},
	{"open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT},
	{"open_tree", unix.SYS_OPEN_TREE},
	{"perf_event_open", unix.SYS_PERF_EVENT_OPEN},
	{"pidfd_getfd", unix.SYS_PIDFD_GETFD},
	{"pivot_root", unix.SYS_PIVOT_ROOT},
	{"process_madvise", unix.SYS_PROCESS_MADVISE},
	{"process_vm_readv", unix.SYS_PROCESS_VM_READV},
	{"process_vm_writev", unix.SYS_PROCESS_VM_WRITEV},
	{"ptrace", unix.SYS_PTRACE},
	{"quotactl", unix.SYS_QUOTACTL},
	{"quotactl_fd", unix.SYS_QUOTACTL_FD},
	{"reboot", unix.SYS_REBOOT},
	{"request_key", unix.SYS_REQUEST_KEY},
	{"set_mempolicy", unix.SYS_SET_MEMPOLICY},
	{"setdomainname", unix.SYS_SETDOMAINNAME},
	{"sethostname", unix.SYS_SETHOSTNAME},
	{"setns", unix.SYS_SETNS},
	{"settimeofday", unix.SYS_SETTIMEOFDAY},
	{"swapoff", unix.SYS_SWAPOFF},
	{"swapon", unix.SYS_SWAPON},
	{"syslog", unix.SYS_SYSLOG},
	{"umount2", unix.SYS_UMOUNT2},
	{"unshare", unix.SYS_UNSHARE},
	{"userfaultfd", unix.SYS_USERFAULTFD},
	{"vhangup", unix.SYS_VHANGUP},
}

// filterVM runs the compiled filter in user space with x/net/bpf's VM.
type filterVM struct{ vm *bpf.VM }

func newFilterVM(t testing.TB, prog []unix.SockFilter) filterVM {
	t.Helper()
	insns := make([]bpf.Instruction, len(prog))
	for i, f := range prog {
		insns[i] = bpf.RawInstruction{Op: f.Code, Jt: f.Jt, Jf: f.Jf, K: f.K}.Disassemble()
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatalf("bpf.NewVM: %v", err)
	}
	return filterVM{vm}
}

// eval returns the filter's verdict for one syscall. The kernel loads each
// 32-bit word of struct seccomp_data in native (little-endian) order, and the
// VM loads words big-endian, so each word is written big-endian at the offset
// where the kernel would find it: a 64-bit argument's low word at
// offArgs+8*i and its high word 4 bytes later.
func (f filterVM) eval(t testing.TB, arch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	var data [64]byte
	binary.BigEndian.PutUint32(data[offNr:], nr)
	binary.BigEndian.PutUint32(data[offArch:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(data[offArgs+8*i:], uint32(a))
		binary.BigEndian.PutUint32(data[offArgs+8*i+4:], uint32(a>>32))
	}
	ret, err := f.vm.Run(data[:])
	if err != nil {
		t.Fatalf("run filter for syscall %d: %v", nr, err)
	}
	return uint32(ret)
}

func nativeVM(t testing.TB) (filterVM, policy) {
	t.Helper()
	p, err := nativePolicy()
	if err != nil {
		t.Fatalf("nativePolicy: %v", err)
	}
	prog, err := Program()
	if err != nil {
		t.Fatalf("Program: %v", err)
	}
	return newFilterVM(t, prog), p
}

// verdictCase is one row of TestVerdicts.
type verdictCase struct {
	name string
	arch uint32 // 0 means the native architecture
	nr   uint32
	args []uint64
	want uint32
}

func verdictName(v uint32) string {
	switch {
	case v == allow:
		return "ALLOW"
	case v == kill:
		return "KILL_PROCESS"
	case v&unix.SECCOMP_RET_ACTION_FULL == unix.SECCOMP_RET_ERRNO:
		return "ERRNO(" + unix.ErrnoName(unix.Errno(v&unix.SECCOMP_RET_DATA)) + ")"
	}
	return "unknown verdict"
}

func TestVerdicts(t *testing.T) {
	t.Parallel()
	f, p := nativeVM(t)
	const hi = 1 << 32 // a high word the kernel ignores for these arguments

	tests := []verdictCase{
		{name: "getpid", nr: unix.SYS_GETPID, want: allow},
		{name: "read", nr: unix.SYS_READ, want: allow},
		{name: "foreign arch", arch: foreignArch, nr: unix.SYS_GETPID, want: kill},
		{name: "unknown arch", arch: 0xdeadbeef, nr: unix.SYS_READ, want: kill},
		{name: "unassigned number", nr: 1000, want: eperm},
		{name: "largest number", nr: 0xffffffff, want: eperm},
		{name: "x32-sized number", nr: 0x3fffffff, want: eperm},

		{name: "clone fork", nr: unix.SYS_CLONE, args: []uint64{uint64(unix.SIGCHLD)}, want: allow},
		{name: "clone vfork pidfd", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_VM | unix.CLONE_VFORK | unix.CLONE_PIDFD | uint64(unix.SIGCHLD)}, want: allow},
		{name: "clone thread", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID}, want: allow},
		{name: "clone high word ignored", nr: unix.SYS_CLONE, args: []uint64{hi | unix.CLONE_NEWNS<<32 | uint64(unix.SIGCHLD)}, want: allow},
		{name: "clone newns", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWNS | uint64(unix.SIGCHLD)}, want: eperm},
		{name: "clone newuts", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWUTS}, want: eperm},
		{name: "clone newipc", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWIPC}, want: eperm},
		{name: "clone newuser", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWUSER}, want: eperm},
		{name: "clone newpid", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWPID}, want: eperm},
		{name: "clone newnet", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWNET}, want: eperm},
		{name: "clone newcgroup", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWCGROUP}, want: eperm},
		{name: "clone newtime bit", nr: unix.SYS_CLONE, args: []uint64{unix.CLONE_NEWTIME}, want: eperm},
		{name: "clone3", nr: unix.SYS_CLONE3, want: enosys},
		{name: "io_setup", nr: unix.SYS_IO_SETUP, args: []uint64{128}, want: enosys},
		{name: "io_submit", nr: unix.SYS_IO_SUBMIT, want: enosys},
		{name: "io_getevents", nr: unix.SYS_IO_GETEVENTS, want: enosys},
		{name: "io_pgetevents", nr: unix.SYS_IO_PGETEVENTS, want: enosys},
		{name: "io_cancel", nr: unix.SYS_IO_CANCEL, want: enosys},
		{name: "io_destroy", nr: unix.SYS_IO_DESTROY, want: enosys},

		{name: "socket unix", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, want: allow},
		{name: "socket unix raw type", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_UNIX, unix.SOCK_RAW}, want: allow},
		{name: "socket inet stream", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET, unix.SOCK_STREAM | unix.SOCK_CLOEXEC | unix.SOCK_NONBLOCK}, want: allow},
		{name: "socket inet dgram icmp", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP}, want: allow},
		{name: "socket inet6 dgram", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET6, unix.SOCK_DGRAM}, want: allow},
		{name: "socket inet raw", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP}, want: eperm},
		{name: "socket inet raw cloexec nonblock", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET, unix.SOCK_RAW | unix.SOCK_CLOEXEC | unix.SOCK_NONBLOCK}, want: eperm},
		{name: "socket inet raw high word", nr: unix.SYS_SOCKET, args: []uint64{hi | unix.AF_INET, hi | unix.SOCK_RAW}, want: eperm},
		{name: "socket inet6 raw", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6}, want: eperm},
		{name: "socket inet packet", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET, unix.SOCK_PACKET}, want: eperm},
		{name: "socket inet6 packet", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_INET6, unix.SOCK_PACKET | unix.SOCK_CLOEXEC}, want: eperm},
		{name: "socket netlink route", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_NETLINK, unix.SOCK_RAW | unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE}, want: allow},
		{name: "socket netlink audit", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_AUDIT}, want: eperm},
		{name: "socket netlink uevent", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_KOBJECT_UEVENT}, want: eperm},
		{name: "socket packet", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_PACKET, unix.SOCK_RAW}, want: eperm},
		{name: "socket key", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_KEY, unix.SOCK_RAW}, want: eperm},
		{name: "socket alg", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_ALG, unix.SOCK_SEQPACKET}, want: eperm},
		{name: "socket vsock", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_VSOCK, unix.SOCK_STREAM}, want: eperm},
		{name: "socket unspec", nr: unix.SYS_SOCKET, args: []uint64{unix.AF_UNSPEC, unix.SOCK_STREAM}, want: eperm},
		{name: "socketpair", nr: unix.SYS_SOCKETPAIR, args: []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, want: allow},

		{name: "ioctl tcgets", nr: unix.SYS_IOCTL, args: []uint64{0, unix.TCGETS}, want: allow},
		{name: "ioctl tiocinq", nr: unix.SYS_IOCTL, args: []uint64{0, unix.TIOCINQ}, want: allow},
		{name: "ioctl tiocsti", nr: unix.SYS_IOCTL, args: []uint64{0, unix.TIOCSTI}, want: eperm},
		{name: "ioctl tiocsti high word", nr: unix.SYS_IOCTL, args: []uint64{0, hi | unix.TIOCSTI}, want: eperm},
		{name: "ioctl tioclinux", nr: unix.SYS_IOCTL, args: []uint64{0, unix.TIOCLINUX}, want: eperm},

		{name: "personality linux", nr: unix.SYS_PERSONALITY, args: []uint64{0}, want: allow},
		{name: "personality linux32", nr: unix.SYS_PERSONALITY, args: []uint64{0x8}, want: allow},
		{name: "personality uname26", nr: unix.SYS_PERSONALITY, args: []uint64{0x20000}, want: allow},
		{name: "personality uname26 linux32", nr: unix.SYS_PERSONALITY, args: []uint64{0x20008}, want: allow},
		{name: "personality query", nr: unix.SYS_PERSONALITY, args: []uint64{0xffffffff}, want: allow},
		{name: "personality query sign-extended", nr: unix.SYS_PERSONALITY, args: []uint64{^uint64(0)}, want: allow},
		{name: "personality addr_no_randomize", nr: unix.SYS_PERSONALITY, args: []uint64{0x0040000}, want: eperm},
		{name: "personality read_implies_exec", nr: unix.SYS_PERSONALITY, args: []uint64{0x0400000}, want: eperm},
		{name: "personality mmap_page_zero", nr: unix.SYS_PERSONALITY, args: []uint64{0x0100000}, want: eperm},
	}
	tests = append(tests, archVerdicts...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			arch := tt.arch
			if arch == 0 {
				arch = p.arch
			}
			if got := f.eval(t, arch, tt.nr, tt.args...); got != tt.want {
				t.Errorf("syscall %d%v: got %s, want %s", tt.nr, tt.args, verdictName(got), verdictName(tt.want))
			}
		})
	}
}

func TestAllowlistAllowed(t *testing.T) {
	t.Parallel()
	f, p := nativeVM(t)
	for _, nr := range p.allow {
		if got := f.eval(t, p.arch, nr); got != allow {
			t.Errorf("allowlisted syscall %d: got %s, want ALLOW", nr, verdictName(got))
		}
	}
}

func TestDeniedSyscalls(t *testing.T) {
	t.Parallel()
	f, p := nativeVM(t)
	for _, s := range append(slices.Clone(deniedSyscalls), archDenied...) {
		if slices.Contains(p.allow, s.nr) {
			t.Errorf("%s (%d) is on the allowlist", s.name, s.nr)
		}
		if _, ok := p.rules[s.nr]; ok {
			t.Errorf("%s (%d) has an argument rule", s.name, s.nr)
		}
		// Arguments must not matter: try zeros and all ones.
		for _, args := range [][]uint64{nil, {^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}} {
			if got := f.eval(t, p.arch, s.nr, args...); got != eperm {
				t.Errorf("%s (%d) with args %x: got %s, want ERRNO(EPERM)", s.name, s.nr, args, verdictName(got))
			}
		}
	}
}

func TestProgramReturnsCopy(t *testing.T) {
	t.Parallel()
	a, err := Program()
	if err != nil {
		t.Fatalf("Program: %v", err)
	}
	want := slices.Clone(a)
	clear(a)
	b, err := Program()
	if err != nil {
		t.Fatalf("Program: %v", err)
	}
	if !slices.Equal(b, want) {
		t.Error("clearing the slice returned by Program changed the cached filter")
	}
}

// TestDispatch checks the binary search against synthetic policies of many
// sizes, the larger ones big enough that some left subtrees exceed a
// conditional jump's 255-instruction reach and need the unconditional-jump
// trampoline.
func TestDispatch(t *testing.T) {
	t.Parallel()
	var b block
	b.add(bpf.LoadAbsolute{Off: offArgs, Size: 4})
	b.jumpIf(bpf.JumpEqual, 7, "allow", "")
	b.add(retErrno(unix.EACCES))
	b.label("allow")
	b.add(retAllow)
	rule, err := b.assemble()
	if err != nil {
		t.Fatalf("assemble rule: %v", err)
	}

	// Syscall nr < n is an argument rule if nr%10 == 5, ENOSYS if nr%10 == 9,
	// allowed if even, and refused otherwise.
	want := func(n, nr uint32, arg uint64) uint32 {
		switch {
		case nr >= n:
			return eperm
		case nr%10 == 5:
			if arg == 7 {
				return allow
			}
			return unix.SECCOMP_RET_ERRNO | uint32(unix.EACCES)
		case nr%10 == 9:
			return enosys
		case nr%2 == 0:
			return allow
		}
		return eperm
	}
	var trampolines int
	for n := uint32(10); n <= 1250; n += 20 {
		p := policy{arch: 0xc0ffee, rules: map[uint32][]bpf.Instruction{}}
		for nr := range n {
			switch {
			case nr%10 == 5:
				p.rules[nr] = rule
			case nr%10 == 9:
				p.rules[nr] = []bpf.Instruction{retErrno(unix.ENOSYS)}
			case nr%2 == 0:
				p.allow = append(p.allow, nr)
			}
		}
		prog, err := compile(p)
		if err != nil {
			t.Fatalf("n=%d: compile: %v", n, err)
		}
		for _, f := range prog {
			if f.Code == unix.BPF_JMP|unix.BPF_JA {
				trampolines++
			}
		}
		f := newFilterVM(t, prog)
		for nr := range n + 20 {
			for _, arg := range []uint64{0, 7} {
				if got := f.eval(t, p.arch, nr, arg); got != want(n, nr, arg) {
					t.Fatalf("n=%d: syscall %d arg %d: got %s, want %s", n, nr, arg, verdictName(got), verdictName(want(n, nr, arg)))
				}
			}
		}
		if got := f.eval(t, p.arch+1, 0); got != kill {
			t.Errorf("n=%d: foreign arch: got %s, want KILL_PROCESS", n, verdictName(got))
		}
	}
	if trampolines == 0 {
		t.Error("got no unconditional jumps, want some: the long-jump path is not exercised")
	}
}

func TestCompileErrors(t *testing.T) {
	t.Parallel()
	var huge policy
	for nr := uint32(0); nr < 2*maxInsns; nr += 2 {
		huge.allow = append(huge.allow, nr)
	}
	tests := []struct {
		name string
		p    policy
		want string
	}{
		{"duplicate allow", policy{allow: []uint32{1, 2, 1}}, "listed twice"},
		{"allow and rule", policy{allow: []uint32{3}, rules: map[uint32][]bpf.Instruction{3: {retAllow}}}, "listed twice"},
		{"empty rule", policy{rules: map[uint32][]bpf.Instruction{3: nil}}, "empty rule"},
		{"max number", policy{allow: []uint32{0xffffffff}}, "0xffffffff"},
		{"too long", huge, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := compile(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("compile: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestBlockErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		build func(b *block)
		want  string
	}{
		{"empty", func(*block) {}, "empty block"},
		{"undefined label", func(b *block) {
			b.jumpIf(bpf.JumpEqual, 1, "nowhere", "")
			b.add(retAllow)
		}, "labels no instruction"},
		{"label past end", func(b *block) {
			b.jumpIf(bpf.JumpEqual, 1, "end", "")
			b.add(retAllow)
			b.label("end")
		}, "labels no instruction"},
		{"backward jump", func(b *block) {
			b.label("top")
			b.add(bpf.LoadAbsolute{Off: offNr, Size: 4})
			b.jumpIf(bpf.JumpEqual, 1, "top", "")
			b.add(retAllow)
		}, "out of range"},
		{"too far", func(b *block) {
			b.jumpIf(bpf.JumpEqual, 1, "far", "")
			for range 256 {
				b.add(retAllow)
			}
			b.label("far")
			b.add(retAllow)
		}, "out of range"},
		{"no final return", func(b *block) {
			b.add(retAllow, bpf.LoadAbsolute{Off: offNr, Size: 4})
		}, "does not end in a return"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b block
			tt.build(&b)
			_, err := b.assemble()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("assemble: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func BenchmarkProgram(b *testing.B) {
	for b.Loop() {
		if _, err := Program(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompile(b *testing.B) {
	for b.Loop() {
		p, err := nativePolicy()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := compile(p); err != nil {
			b.Fatal(err)
		}
	}
}
