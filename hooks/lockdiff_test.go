package hooks

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// lock renders a lockfile of version v with the given install paths and
// versions (a version starting with "link:" makes a link entry). Version 2
// also carries npm 6's "dependencies" section, which must be ignored.
func lock(t *testing.T, v int, pkgs map[string]string) []byte {
	t.Helper()
	packages := map[string]any{"": map[string]any{"name": "app", "version": "1.0.0", "dependencies": map[string]string{"x": "^1.0.0"}}}
	legacy := map[string]any{}
	for path, ver := range pkgs {
		if target, ok := strings.CutPrefix(ver, "link:"); ok {
			packages[path] = map[string]any{"resolved": target, "link": true}
			continue
		}
		packages[path] = map[string]any{"version": ver, "resolved": "https://registry.example/" + path + ".tgz", "integrity": "sha512-x"}
		legacy[path] = map[string]any{"version": "0.0.0-legacy-ignored"}
	}
	doc := map[string]any{"name": "app", "version": "1.0.0", "lockfileVersion": v, "requires": true, "packages": packages}
	if v == 2 {
		doc["dependencies"] = legacy
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDiffLockfiles(t *testing.T) {
	base := map[string]string{
		"node_modules/express":                         "4.18.2",
		"node_modules/@types/node":                     "20.1.0",
		"node_modules/debug":                           "4.3.4",
		"node_modules/send/node_modules/debug":         "2.6.9",
		"node_modules/ms":                              "2.1.3",
		"packages/web":                                 "1.0.0", // a workspace folder: the app's own
		"packages/web/node_modules/left-pad":           "1.3.0",
		"node_modules/web":                             "link:packages/web",
		"node_modules/a/node_modules/b/node_modules/c": "1.0.0",
	}
	with := func(changes map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range changes {
			if v == "" {
				delete(out, k)
			} else {
				out[k] = v
			}
		}
		return out
	}
	tests := []struct {
		name      string
		before    map[string]string
		after     map[string]string
		want      Changes
		wantLines []string
	}{
		{name: "unchanged", before: base, after: base, want: Changes{}, wantLines: []string{}},
		{
			name:   "updated",
			before: base,
			after:  with(map[string]string{"node_modules/express": "4.19.2", "node_modules/@types/node": "20.11.5"}),
			want: Changes{Updated: []Change{
				{Name: "@types/node", Old: "20.1.0", New: "20.11.5"},
				{Name: "express", Old: "4.18.2", New: "4.19.2"},
			}},
			wantLines: []string{"@types/node 20.1.0 -> 20.11.5", "express 4.18.2 -> 4.19.2"},
		},
		{
			name:      "added",
			before:    base,
			after:     with(map[string]string{"node_modules/zod": "3.22.4"}),
			want:      Changes{Added: []Change{{Name: "zod", New: "3.22.4"}}},
			wantLines: []string{"+ zod 3.22.4"},
		},
		{
			name:      "removed",
			before:    base,
			after:     with(map[string]string{"node_modules/ms": ""}),
			want:      Changes{Removed: []Change{{Name: "ms", Old: "2.1.3"}}},
			wantLines: []string{"- ms 2.1.3"},
		},
		{
			name:   "nested copies are their own changes",
			before: base,
			after: with(map[string]string{
				"node_modules/send/node_modules/debug":         "",      // deduped away
				"node_modules/debug":                           "4.3.5", // top-level one updated
				"node_modules/a/node_modules/b/node_modules/c": "1.0.1",
				"packages/web/node_modules/left-pad":           "1.3.1",
			}),
			want: Changes{
				Updated: []Change{
					{Name: "a/node_modules/b/node_modules/c", Old: "1.0.0", New: "1.0.1"},
					{Name: "debug", Old: "4.3.4", New: "4.3.5"},
					{Name: "packages/web/node_modules/left-pad", Old: "1.3.0", New: "1.3.1"},
				},
				Removed: []Change{{Name: "send/node_modules/debug", Old: "2.6.9"}},
			},
			wantLines: []string{
				"a/node_modules/b/node_modules/c 1.0.0 -> 1.0.1",
				"debug 4.3.4 -> 4.3.5",
				"packages/web/node_modules/left-pad 1.3.0 -> 1.3.1",
				"- send/node_modules/debug 2.6.9",
			},
		},
		{
			name:      "workspace folder versions and link targets",
			before:    base,
			after:     with(map[string]string{"packages/web": "2.0.0", "node_modules/web": "link:packages/web2"}),
			want:      Changes{Updated: []Change{{Name: "web", Old: "link:packages/web", New: "link:packages/web2"}}},
			wantLines: []string{"web link:packages/web -> link:packages/web2"},
		},
		{
			name:   "everything at once",
			before: base,
			after:  with(map[string]string{"node_modules/ms": "", "node_modules/zod": "3.0.0", "node_modules/express": "5.0.0"}),
			want: Changes{
				Updated: []Change{{Name: "express", Old: "4.18.2", New: "5.0.0"}},
				Added:   []Change{{Name: "zod", New: "3.0.0"}},
				Removed: []Change{{Name: "ms", Old: "2.1.3"}},
			},
			wantLines: []string{"express 4.18.2 -> 5.0.0", "+ zod 3.0.0", "- ms 2.1.3"},
		},
	}
	for _, v := range []int{2, 3} {
		for _, tt := range tests {
			t.Run(tt.name+"/v"+string(rune('0'+v)), func(t *testing.T) {
				got, err := DiffLockfiles(lock(t, v, tt.before), lock(t, v, tt.after))
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(tt.want, got); d != "" {
					t.Errorf("changes (-want +got):\n%s", d)
				}
				if got.Count() != len(tt.wantLines) {
					t.Errorf("Count() = %d, want %d", got.Count(), len(tt.wantLines))
				}
				if d := cmp.Diff(tt.wantLines, got.Lines()); d != "" {
					t.Errorf("lines (-want +got):\n%s", d)
				}
			})
		}
	}
}

func TestDiffLockfilesV2ToV3(t *testing.T) {
	got, err := DiffLockfiles(lock(t, 2, map[string]string{"node_modules/a": "1.0.0"}), lock(t, 3, map[string]string{"node_modules/a": "1.0.1"}))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"a 1.0.0 -> 1.0.1"}, got.Lines()); d != "" {
		t.Error(d)
	}
}

func TestDiffLockfilesMalformed(t *testing.T) {
	good := lock(t, 3, map[string]string{"node_modules/a": "1.0.0"})
	tests := []struct {
		name, doc, want string
	}{
		{"not JSON", `{"lockfileVersion": 3, "packages": {`, "reading the old lockfile: parsing lockfile"},
		{"empty", ``, "parsing lockfile"},
		{"v1", `{"lockfileVersion": 1, "dependencies": {"a": {"version": "1.0.0"}}}`, "lockfileVersion 1 is not supported"},
		{"no version", `{"packages": {}}`, "no lockfileVersion"},
		{"no packages", `{"lockfileVersion": 3}`, `without a "packages" section`},
		{"packages wrong type", `{"lockfileVersion": 3, "packages": []}`, "parsing lockfile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DiffLockfiles([]byte(tt.doc), good); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("before malformed: err = %v, want it to contain %q", err, tt.want)
			}
			want := strings.Replace(tt.want, "old", "new", 1)
			if _, err := DiffLockfiles(good, []byte(tt.doc)); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("after malformed: err = %v, want it to contain %q", err, want)
			}
		})
	}
}
