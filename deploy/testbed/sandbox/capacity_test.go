package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriteCapacitySVG(t *testing.T) {
	s := time.Second
	c := Capacity{
		Steps: []Step{{0, 2}, {3 * s, 1}, {9 * s, 2}},
		Nodes: []Track{
			{Name: "n0", Out: []Band{{Start: 3 * s, End: 9 * s}}, Phases: []Band{{Name: "pre", Start: 2 * s, End: 4 * s}, {Name: "exit", Start: 7 * s, End: 10 * s}}},
			{Name: "n<1>", Phases: []Band{{Name: "pre", Start: 11 * s, End: 12 * s}}},
		},
		Load: Stats{Total: 30, OK: 27, Failed: 2, Refused: 1, Elapsed: 13 * s, Timeline: []Bucket{{OK: 3}, {Failed: 2}, {}, {Refused: 1}}},
	}
	path := filepath.Join(t.TempDir(), "c.svg")
	if err := WriteCapacitySVG(path, "fleet & <4>", c); err != nil {
		t.Fatal(err)
	}
	rects, texts := parseSVG(t, path)
	for class, n := range map[string]int{"phase": 3, "out": 1, "failed": 2} {
		if rects[class] != n {
			t.Errorf("%d rects of class %q, want %d (all %v)", rects[class], class, n, rects)
		}
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{"fleet & <4>", "n0", "n<1>", "exit", "time (s)", "(3 of 30)", "12"} {
		if !strings.Contains(all, want) {
			t.Errorf("no text %q; texts:\n%s", want, all)
		}
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), `class="capacity" d="M60.00 `) || strings.Count(string(raw), " V") != 2 {
		t.Errorf("the step line does not step twice:\n%s", raw)
	}
}
