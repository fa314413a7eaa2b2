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
	warmGoToolchain(t)
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

// TestJudgeLanguagesExecute runs the new languages through the /v1 one-shot path (Execute):
// a compiled language answers the run, or the compiler's result when the compile fails.
func TestJudgeLanguagesExecute(t *testing.T) {
	warmGoToolchain(t)
	e := mustEngine(t)
	for _, tc := range []struct {
		name, lang, code string
		exit             int
		stdout, stderr   string
	}{
		{"c", api.LanguageC, "#include <stdio.h>\nint main(void){puts(\"c\"); return 4;}", 4, "c\n", ""},
		{"go", "golang", "package main\nfunc main(){println(\"go\")}", 0, "", "go\n"},
		{"javascript", api.LanguageJavaScript, "console.log(6*7)", 0, "42\n", ""},
		{"compile error", api.LanguageCPP, "int main( {", 1, "", "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res, err := e.Execute(t.Context(), engine.OneShot{Language: tc.lang, Code: tc.code})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tc.exit || res.Stdout != tc.stdout || !strings.Contains(res.Stderr, tc.stderr) {
				t.Fatalf("got exit %d stdout %q stderr %q, want %d %q %q", res.ExitCode, res.Stdout, res.Stderr, tc.exit, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestJudgeCompileStageAttack attacks from the compile stage, whose argv a Judge0 client
// partly controls (compiler_options): gcc's -wrapper runs a shell instead of the compiler, which
// looks for the daemon's secrets; and the run stage looks for the source. The compile is a
// sandbox like any run, and the run sees the artifact and the data files, not the source.
func TestJudgeCompileStageAttack(t *testing.T) {
	warmGoToolchain(t)
	e := mustEngine(t)
	_, secret, _ := strings.Cut(fakeSecret, "=")
	res, err := e.RunProgram(t.Context(), engine.Program{Language: api.LanguageC, Code: "int main(void){return 0;}",
		CompileArgs: []string{"-wrapper", "/bin/sh,-c,cat /proc/*/environ /etc/shadow /root/.ssh/* 2>&1; env; ls / /workspace; exit 1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Compile == nil || res.Run != nil {
		t.Fatalf("the wrapped compile did not fail: %+v", res)
	}
	if out := res.Compile.Stdout + res.Compile.Stderr; strings.Contains(out, secret) || !strings.Contains(out, "main.c") {
		t.Fatalf("the compile stage saw the daemon's secret, or did not run at all:\n%s", out)
	}
	res, err = e.RunProgram(t.Context(), engine.Program{Language: api.LanguageC, Files: map[string]string{"data.txt": "7"},
		Code: "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d %d\\n\", access(\"main.c\", F_OK), access(\"data.txt\", F_OK)); return 0;}"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Run == nil || res.Run.Stdout != "-1 0\n" {
		t.Fatalf("the run saw the source, or lacks its data file (0 = present, want -1 0): %+v %+v", res.Compile, res.Run)
	}
}
