package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/examples/internal/exampletest"
)

func TestRun(t *testing.T) {
	c := exampletest.Client(t)
	var out bytes.Buffer
	if err := run(t.Context(), c, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "Success: true") || !strings.Contains(got, "Hello from sandbox!\n") {
		t.Errorf("output:\n%s", got)
	}
}

func TestExecuteCode(t *testing.T) {
	c := exampletest.Client(t)
	tests := []struct {
		name string
		code string
		o    Options
		want Result
	}{
		{"sum", "print(sum(range(100)))", Options{}, Result{Success: true, Stdout: "4950\n"}},
		{"exit code", "import sys; print('bye'); sys.exit(3)", Options{}, Result{Stdout: "bye\n", ReturnCode: 3}},
		{"timeout", "import time; time.sleep(30)", Options{Timeout: 1}, Result{Stderr: "Execution timed out", ReturnCode: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := executeCode(t.Context(), c, tt.code, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("executeCode = %+v, want %+v", got, tt.want)
			}
		})
	}
	got, err := executeCode(t.Context(), c, "1/0", Options{})
	if err != nil || got.Success || got.ReturnCode != 1 || !strings.Contains(got.Stderr, "ZeroDivisionError") {
		t.Errorf("executeCode(1/0) = %+v, %v", got, err)
	}
}
