package sandbox

import (
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// parseSVG parses path with encoding/xml and returns the class of every rect
// and the text of every text element.
func parseSVG(t *testing.T, path string) (rects map[string]int, texts []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	rects = map[string]int{}
	inText, root := false, ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s is not valid XML: %v", path, err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = e.Name.Local
			}
			switch e.Name.Local {
			case "rect":
				class := ""
				for _, a := range e.Attr {
					if a.Name.Local == "class" {
						class = a.Value
					}
				}
				rects[class]++
			case "text":
				inText = true
				texts = append(texts, "")
			}
		case xml.EndElement:
			if e.Name.Local == "text" {
				inText = false
			}
		case xml.CharData:
			if inText {
				texts[len(texts)-1] += string(e)
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	return rects, texts
}

func TestWriteTimelineSVG(t *testing.T) {
	s := Stats{
		Total: 14, OK: 10, Refused: 3, Failed: 1, Elapsed: 900 * time.Millisecond,
		Timeline: []Bucket{
			{OK: 4},
			{},
			{OK: 3, Refused: 2},
			{Refused: 1},
			{OK: 3, Failed: 1},
		},
	}
	bands := []Band{
		{Name: "pre", Start: 100 * time.Millisecond, End: 300 * time.Millisecond},
		{Name: "patch & <reboot>", Start: 300 * time.Millisecond, End: 2 * time.Second},
	}
	path := filepath.Join(t.TempDir(), "t.svg")
	if err := WriteTimelineSVG(path, `demo "run" <1>`, s, bands); err != nil {
		t.Fatal(err)
	}
	rects, texts := parseSVG(t, path)
	want := map[string]int{"ok": 3, "refused": 2, "failed": 1, "band": 2}
	for class, n := range want {
		if rects[class] != n {
			t.Errorf("%d rects of class %q, want %d (all: %v)", rects[class], class, n, rects)
		}
	}
	all := strings.Join(texts, "\n")
	for _, s := range []string{"pre", "patch & <reboot>", `demo "run" <1>`, "time (s)", "ok (10)", "refused (3)", "failed (1)", "1.8"} {
		if !strings.Contains(all, s) {
			t.Errorf("no text %q in the svg; texts:\n%s", s, all)
		}
	}
}

func TestWriteTimelineSVGEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.svg")
	if err := WriteTimelineSVG(path, "nothing", Stats{}, nil); err != nil {
		t.Fatal(err)
	}
	rects, texts := parseSVG(t, path)
	for _, c := range []string{"ok", "refused", "failed", "band"} {
		if rects[c] != 0 {
			t.Errorf("%d rects of class %q in an empty timeline", rects[c], c)
		}
	}
	if !strings.Contains(strings.Join(texts, "\n"), "nothing") {
		t.Errorf("title missing: %q", texts)
	}
}

func TestNiceCeilAndTicks(t *testing.T) {
	for n, want := range map[int]int{0: 2, 1: 2, 3: 10, 7: 10, 11: 20, 21: 50, 40: 50, 101: 200} {
		if got := niceCeil(n); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", n, got, want)
		}
	}
	for _, span := range []time.Duration{0, time.Millisecond, time.Second, 27 * time.Second, time.Hour} {
		if st := tickStep(max(span, time.Millisecond)); st <= 0 || span/st > 16 {
			t.Errorf("tickStep(%s) = %s", span, st)
		}
	}
}
