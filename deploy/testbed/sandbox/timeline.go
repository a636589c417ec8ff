package sandbox

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"time"
)

// Band is a named span of a run (a phase, the reboot) drawn behind the timeline.
type Band struct {
	Name       string
	Start, End time.Duration // offsets from the Stats start
}

// Geometry and colours of WriteTimelineSVG.
const (
	svgWidth   = 1000
	svgHeight  = 380
	svgLeft    = 60 // room for the y axis labels
	svgRight   = 20
	svgTop     = 70 // title and legend
	svgBottom  = 50 // time axis and its label
	colOK      = "#2e8b57"
	colRefused = "#f0a030"
	colFailed  = "#d62728"
)

var bandColours = []string{"#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"}

// WriteTimelineSVG draws requests per BucketWidth (ok stacked with refused and failed, distinct colours, a legend) over time with the bands as labelled translucent rectangles and a time axis in seconds, into path (an SVG file, no external assets, valid XML); title on top.
//
// Each non-empty (bucket, series) pair is one rect of class "ok", "refused"
// or "failed"; each band is one rect of class "band".
func WriteTimelineSVG(path, title string, s Stats, bands []Band) error {
	b := renderTimelineSVG(title, s, bands)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("writing timeline svg: %w", err)
	}
	return nil
}

func renderTimelineSVG(title string, s Stats, bands []Band) []byte {
	// The time span: the buckets, the run and every band.
	span := time.Duration(len(s.Timeline)) * BucketWidth
	span = max(span, s.Elapsed)
	for _, bd := range bands {
		span = max(span, bd.End, bd.Start)
	}
	if span <= 0 {
		span = time.Second
	}
	maxCount := 0
	for _, t := range s.Timeline {
		maxCount = max(maxCount, t.OK+t.Refused+t.Failed)
	}
	yMax := niceCeil(max(maxCount, 1))

	plotW := float64(svgWidth - svgLeft - svgRight)
	plotH := float64(svgHeight - svgTop - svgBottom)
	x := func(d time.Duration) float64 {
		d = min(max(d, 0), span)
		return svgLeft + plotW*float64(d)/float64(span)
	}
	y := func(c float64) float64 { return svgTop + plotH - plotH*c/float64(yMax) }

	var w bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, svgHeight, svgWidth, svgHeight)
	p(`<rect class="background" x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", svgWidth, svgHeight)
	p(`<text x="%d" y="22" font-size="16" font-weight="bold">%s</text>`+"\n", svgLeft, esc(title))

	// Bands behind everything else, their labels above the plot, each in
	// the first of three rows where it overlaps no other label.
	var rowEnd [3]float64
	for i := range rowEnd {
		rowEnd[i] = math.Inf(-1)
	}
	for i, bd := range bands {
		x0, x1 := x(bd.Start), x(bd.End)
		c := bandColours[i%len(bandColours)]
		p(`<rect class="band" x="%.2f" y="%d" width="%.2f" height="%.2f" fill="%s" fill-opacity="0.15" stroke="%s" stroke-opacity="0.4"/>`+"\n",
			x0, svgTop, max(x1-x0, 0.5), plotH, c, c)
		mid, half := (x0+x1)/2, 3.5*float64(len([]rune(bd.Name)))+4
		row := 0
		for row < len(rowEnd)-1 && mid-half < rowEnd[row] {
			row++
		}
		rowEnd[row] = mid + half
		p(`<text class="band-label" x="%.2f" y="%d" fill="%s" text-anchor="middle" font-weight="bold">%s</text>`+"\n",
			mid, svgTop-6-row*13, c, esc(bd.Name))
	}

	// Horizontal grid and the y axis.
	for _, v := range []int{0, yMax / 2, yMax} {
		yy := y(float64(v))
		p(`<line x1="%d" y1="%.2f" x2="%d" y2="%.2f" stroke="#ddd"/>`+"\n", svgLeft, yy, svgWidth-svgRight, yy)
		p(`<text x="%d" y="%.2f" text-anchor="end">%d</text>`+"\n", svgLeft-6, yy+4, v)
	}
	p(`<text x="14" y="%.2f" transform="rotate(-90 14 %.2f)" text-anchor="middle">requests / %s</text>`+"\n",
		svgTop+plotH/2, svgTop+plotH/2, BucketWidth)

	// The stacked buckets: ok at the bottom, then refused, then failed.
	bw := x(BucketWidth) - x(0)
	for i, t := range s.Timeline {
		x0 := x(time.Duration(i) * BucketWidth)
		base := 0
		for _, ser := range []struct {
			class, colour string
			n             int
		}{{"ok", colOK, t.OK}, {"refused", colRefused, t.Refused}, {"failed", colFailed, t.Failed}} {
			if ser.n == 0 {
				continue
			}
			y0, y1 := y(float64(base+ser.n)), y(float64(base))
			p(`<rect class="%s" x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="%s"/>`+"\n",
				ser.class, x0, y0, max(bw-0.3, 0.3), y1-y0, ser.colour)
			base += ser.n
		}
	}

	timeAxis(p, x, svgTop, svgTop+plotH, span, svgHeight)

	// The legend, top right.
	lx := svgWidth - svgRight - 330
	for i, l := range []struct{ name, colour string }{
		{fmt.Sprintf("ok (%d)", s.OK), colOK},
		{fmt.Sprintf("refused (%d)", s.Refused), colRefused},
		{fmt.Sprintf("failed (%d)", s.Failed), colFailed},
	} {
		xx := lx + i*110
		p(`<rect class="legend" x="%d" y="30" width="12" height="12" fill="%s"/>`+"\n", xx, l.colour)
		p(`<text x="%d" y="40">%s</text>`+"\n", xx+16, esc(l.name))
	}
	p("</svg>\n")
	return w.Bytes()
}

// timeAxis draws the axes' lines from top to axisY and, below it, the time
// in seconds over span (x maps a time to its abscissa), labelled at the
// bottom of an SVG height high.
func timeAxis(p func(string, ...any), x func(time.Duration) float64, top, axisY float64, span time.Duration, height int) {
	p(`<line x1="%d" y1="%.2f" x2="%d" y2="%.2f" stroke="black"/>`+"\n", svgLeft, axisY, svgWidth-svgRight, axisY)
	p(`<line x1="%d" y1="%.2f" x2="%d" y2="%.2f" stroke="black"/>`+"\n", svgLeft, top, svgLeft, axisY)
	step := tickStep(span)
	for t := time.Duration(0); t <= span; t += step {
		xx := x(t)
		p(`<line x1="%.2f" y1="%.2f" x2="%.2f" y2="%.2f" stroke="black"/>`+"\n", xx, axisY, xx, axisY+5)
		p(`<text x="%.2f" y="%.2f" text-anchor="middle">%s</text>`+"\n", xx, axisY+18, trimSeconds(t))
	}
	p(`<text x="%.2f" y="%d" text-anchor="middle">time (s)</text>`+"\n", (svgLeft+svgWidth-svgRight)/2.0, height-8)
}

// niceCeil rounds n up to 1, 2 or 5 times a power of ten (at least 2, so
// that the half-way grid line is an integer).
func niceCeil(n int) int {
	if n <= 2 {
		return 2
	}
	p := math.Pow(10, math.Floor(math.Log10(float64(n))))
	for _, m := range []float64{1, 2, 5, 10} {
		if v := int(m * p); v >= n && v%2 == 0 {
			return v
		}
	}
	return n
}

// tickStep picks a tick spacing that gives at most about 15 ticks.
func tickStep(span time.Duration) time.Duration {
	for _, s := range []time.Duration{
		100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
		15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute,
		5 * time.Minute, 10 * time.Minute,
	} {
		if span/s <= 15 {
			return s
		}
	}
	return span / 10
}

// trimSeconds formats d in seconds without trailing zeros: 0, 0.5, 12.
func trimSeconds(d time.Duration) string {
	return fmt.Sprintf("%g", math.Round(d.Seconds()*1000)/1000)
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
