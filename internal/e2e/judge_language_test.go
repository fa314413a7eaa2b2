package e2e

import (
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// helloPrograms read one line of stdin and print "hello <line> <first argument>", one per
// language of the table.
var helloPrograms = map[string]string{
	api.LanguagePython: "import sys\nprint('hello', input(), sys.argv[1])\n",
	api.LanguageBash:   "read x; echo hello $x $1\n",
	api.LanguageC: "#include <stdio.h>\nint main(int c, char **v){char b[64]; scanf(\"%63s\", b); " +
		"printf(\"hello %s %s\\n\", b, v[1]); return 0;}\n",
	api.LanguageCPP: "#include <iostream>\n#include <string>\nint main(int c, char **v){std::string s; std::cin >> s; " +
		"std::cout << \"hello \" << s << ' ' << v[1] << std::endl;}\n",
	api.LanguageGo: "package main\nimport (\"fmt\"; \"os\")\nfunc main(){var s string; fmt.Scan(&s); " +
		"fmt.Println(\"hello\", s, os.Args[1])}\n",
	api.LanguageJavaScript: "const s = require('fs').readFileSync(0, 'utf8').trim();\n" +
		"console.log('hello', s, process.argv[2]);\n",
}

// TestJudgeLanguages compiles (where the language is compiled) and runs a program in each
// language the host image carries, stdin and arguments included, each stage in its own sandbox.
func TestJudgeLanguages(t *testing.T) {
	e := mustEngine(t)
	langs := e.Languages(t.Context())
	var names []string
	for _, l := range langs {
		names = append(names, l.Name+" "+l.Version)
	}
	t.Logf("languages: %s", strings.Join(names, ", "))
	for _, want := range api.Languages {
		if _, ok := e.Language(t.Context(), want); !ok {
			t.Errorf("language %s is not available; the test host must carry its toolchain (scripts/test installs it)", want)
		}
	}
	for _, l := range langs {
		t.Run(l.Name, func(t *testing.T) {
			t.Parallel()
			res, err := e.RunProgram(t.Context(), engine.Program{Language: l.Name, Code: helloPrograms[l.Name],
				Args: []string{"arg1"}, Stdin: "world\n"})
			if err != nil {
				t.Fatal(err)
			}
			if l.Compiled() != (res.Compile != nil) {
				t.Fatalf("compile stage %v for compiled=%v", res.Compile, l.Compiled())
			}
			if res.Compile != nil && !res.Compile.Success() {
				t.Fatalf("compile failed: exit %d: %s", res.Compile.ExitCode, res.Compile.Stderr)
			}
			if got, want := res.Run.Stdout, "hello world arg1\n"; got != want || !res.Run.Success() {
				t.Fatalf("got %q (exit %d, stderr %q), want %q", got, res.Run.ExitCode, res.Run.Stderr, want)
			}
		})
	}
}
