package engine

import (
	"regexp"
	"strings"
)

// Which zygote a program runs in. Each key has two: the full zygote (numpy, pandas, matplotlib
// and --zygote-modules imported) and the lean one (the standard library only). A child of the
// full zygote inherits its 87 MiB of mapped memory: its fork copies those page tables, its
// writes copy pages, its exit unmaps them — ≈ 3 ms of CPU per process, two processes per run,
// that a program printing a line pays for modules it never imports. A child of the lean zygote
// (≈ 9 MiB) pays a fraction. The choice is a routing decision, never a correctness one: both
// zygotes run any program (a program in the lean zygote that imports numpy after all imports it
// at run time, as a cold sandbox would), so a program only has to look like it needs no
// third-party module to be sent to the lean zygote.

// fullZygoteModules are the top-level modules the full zygote imports itself.
var fullZygoteModules = wordSet("numpy pandas matplotlib pylab mpl_toolkits")

// importRE finds import statements: `import a.b as c, d` (group 1) and `from a.b import c`
// (group 2), at a line's start or after a semicolon.
var importRE = regexp.MustCompile(`(?m)(?:^|;)[ \t]*(?:import[ \t]+([\w. \t,]+)|from[ \t]+([\w.]+)[ \t]+import\b)`)

// zygoteFull says whether code should run in the full zygote: it names one of the full zygote's
// modules or the operator's (as any word: an import, a string given to __import__, a comment),
// or it imports a module outside the standard library (which may import numpy itself, as scipy
// and scikit-learn do).
func zygoteFull(code string, modules []string) bool {
	extra := map[string]bool{}
	for _, m := range modules {
		top, _, _ := strings.Cut(m, ".")
		extra[top] = true
	}
	for _, w := range strings.FieldsFunc(code, notIdent) {
		if fullZygoteModules[w] || extra[w] {
			return true
		}
	}
	for _, m := range importRE.FindAllStringSubmatch(code, -1) {
		names := []string{m[2]}
		if m[1] != "" {
			names = strings.Split(m[1], ",")
		}
		for _, n := range names {
			n = strings.TrimSpace(n)
			if strings.HasPrefix(n, ".") {
				continue // relative: the program's own files
			}
			top, _, _ := strings.Cut(strings.Fields(n + " ")[0], ".")
			if top != "" && !stdlibModules[top] {
				return true
			}
		}
	}
	return false
}

// notIdent splits source into Python identifier-like words.
func notIdent(r rune) bool {
	return !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
}

// wordSet is the set of the whitespace-separated words of s.
func wordSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(s) {
		m[w] = true
	}
	return m
}
