package engine

import (
	"maps"
	"testing"

	"github.com/airlockhq/airlock/api"
)

func TestParseProbe(t *testing.T) {
	out := "python\t3.11.2\n\nbash\t5.2.15\n\nc\t\ncpp\t12.2.0\ncobol\t1.0\ngo\t" + string(make([]byte, 80)) + "\n"
	got := parseProbe(out)
	want := map[string]string{"python": "3.11.2", "bash": "5.2.15", "cpp": "12.2.0"}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestLookupLanguage(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"py", api.LanguagePython}, {"SH", api.LanguageBash}, {"c++", api.LanguageCPP}, {"golang", api.LanguageGo},
		{"node", api.LanguageJavaScript}, {"gcc", api.LanguageC}, {"cobol", ""},
	} {
		l, ok := lookupLanguage(tc.name)
		if l.Name != tc.want || ok != (tc.want != "") {
			t.Errorf("lookupLanguage(%q) = %q, %v; want %q", tc.name, l.Name, ok, tc.want)
		}
	}
	// Every language of the API has a row, and every compiled one an artifact.
	for _, name := range api.Languages {
		l, ok := lookupLanguage(name)
		if !ok || l.Source == "" || len(l.Run) == 0 || (l.Compiled() && l.Artifact == "") {
			t.Errorf("language %s: %+v", name, l)
		}
	}
}
