package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"time"
)

// Capacity is a fleet rollout seen from its load balancer: how many nodes
// it had in rotation over time, each node's own track, and the clients'
// load through it. Every time is an offset from the load's start.
type Capacity struct {
	Steps []Step  // the in-rotation count, each from its At until the next
	Nodes []Track // one row per node
	Load  Stats   // requests through the LB
}

// Step is the number of nodes in rotation from At on.
type Step struct {
	At         time.Duration
	InRotation int
}

// Track is one node: the spans the LB had it out of rotation, and its
// cycle's phases (pre, patch, post, reboot, exit).
type Track struct {
	Name   string
	Out    []Band
	Phases []Band
}

// phaseOrder gives each of a cycle's phases its colour of bandColours.
var phaseOrder = []string{"pre", "patch", "post", "reboot", "exit"}

// Geometry of WriteCapacitySVG beyond WriteTimelineSVG's.
const (
	capPlotH  = 110 // the in-rotation step line
	capRowH   = 26  // one node's track
	capErrH   = 60  // failed requests per bucket
	capGap    = 18
	colOut    = "#bbbbbb"
	colInRot  = "#2e8b57"
	capHeader = 70
)

// WriteCapacitySVG draws c into path (an SVG file, no external assets,
// valid XML): on top the number of nodes in rotation as a step line (class
// "capacity"), then a row per node with its out-of-rotation spans (class
// "out") over its phases (class "phase", labelled), then the failed
// requests per BucketWidth (class "failed"), and a time axis in seconds.
func WriteCapacitySVG(path, title string, c Capacity) error {
	if err := os.WriteFile(path, renderCapacitySVG(title, c), 0o644); err != nil {
		return fmt.Errorf("writing capacity svg: %w", err)
	}
	return nil
}

func renderCapacitySVG(title string, c Capacity) []byte {
	span := max(c.Load.Elapsed, time.Duration(len(c.Load.Timeline))*BucketWidth)
	for _, s := range c.Steps {
		span = max(span, s.At)
	}
	for _, t := range c.Nodes {
		for _, b := range append(append([]Band(nil), t.Out...), t.Phases...) {
			span = max(span, b.End)
		}
	}
	if span <= 0 {
		span = time.Second
	}
	height := capHeader + capPlotH + capGap + capRowH*len(c.Nodes) + capGap + capErrH + svgBottom
	plotW := float64(svgWidth - svgLeft - svgRight)
	x := func(d time.Duration) float64 {
		d = min(max(d, 0), span)
		return svgLeft + plotW*float64(d)/float64(span)
	}
	var w bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height)
	p(`<rect class="background" x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", svgWidth, height)
	p(`<text x="%d" y="22" font-size="16" font-weight="bold">%s</text>`+"\n", svgLeft, esc(title))
	p(`<text x="%d" y="44">nodes in rotation (the LB's view, sampled), each node's time out of rotation (grey) over its phases, and the clients' failed requests (%d of %d)</text>`+"\n",
		svgLeft, c.Load.Failed+c.Load.Refused, c.Load.Total)

	// The in-rotation count: 0 to the number of nodes.
	top := float64(capHeader)
	nMax := max(len(c.Nodes), 1)
	y := func(n int) float64 { return top + capPlotH - capPlotH*float64(n)/float64(nMax) }
	for n := 0; n <= nMax; n++ {
		p(`<line x1="%d" y1="%.2f" x2="%d" y2="%.2f" stroke="#eee"/>`+"\n", svgLeft, y(n), svgWidth-svgRight, y(n))
		p(`<text x="%d" y="%.2f" text-anchor="end">%d</text>`+"\n", svgLeft-6, y(n)+4, n)
	}
	if len(c.Steps) > 0 {
		var path bytes.Buffer
		fmt.Fprintf(&path, "M%.2f %.2f", x(c.Steps[0].At), y(c.Steps[0].InRotation))
		for _, s := range c.Steps[1:] {
			fmt.Fprintf(&path, " H%.2f V%.2f", x(s.At), y(s.InRotation))
		}
		fmt.Fprintf(&path, " H%.2f", x(span))
		p(`<path class="capacity" d="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", path.String(), colInRot)
	}

	// One row per node.
	rowTop := top + capPlotH + capGap
	for i, t := range c.Nodes {
		ry := rowTop + float64(i*capRowH)
		p(`<text x="%d" y="%.2f" text-anchor="end">%s</text>`+"\n", svgLeft-6, ry+capRowH/2+4, esc(t.Name))
		for j, b := range t.Phases {
			col := bandColours[j%len(bandColours)]
			if k := slices.Index(phaseOrder, b.Name); k >= 0 {
				col = bandColours[k] // a phase has its colour in every chart
			}
			x0, x1 := x(b.Start), x(b.End)
			p(`<rect class="phase" x="%.2f" y="%.2f" width="%.2f" height="%d" fill="%s" fill-opacity="0.25" stroke="%s" stroke-opacity="0.5"/>`+"\n",
				x0, ry+2, max(x1-x0, 0.5), capRowH-4, col, col)
			if x1-x0 > 7*float64(len(b.Name)) {
				p(`<text x="%.2f" y="%.2f" text-anchor="middle" font-size="10" fill="%s">%s</text>`+"\n", (x0+x1)/2, ry+capRowH/2+4, col, esc(b.Name))
			}
		}
		for _, b := range t.Out {
			x0, x1 := x(b.Start), x(b.End)
			p(`<rect class="out" x="%.2f" y="%.2f" width="%.2f" height="4" fill="%s"/>`+"\n", x0, ry+capRowH-6, max(x1-x0, 0.5), colOut)
		}
	}

	// Failed requests per bucket.
	errTop := rowTop + float64(capRowH*len(c.Nodes)) + capGap
	maxFailed := 0
	for _, b := range c.Load.Timeline {
		maxFailed = max(maxFailed, b.Failed+b.Refused)
	}
	yMax := niceCeil(max(maxFailed, 1))
	p(`<text x="%d" y="%.2f" text-anchor="end">%d</text>`+"\n", svgLeft-6, errTop+8, yMax)
	p(`<text x="%d" y="%.2f" text-anchor="end" fill="%s">failed</text>`+"\n", svgLeft-6, errTop+capErrH/2+4, colFailed)
	bw := x(BucketWidth) - x(0)
	for i, b := range c.Load.Timeline {
		n := b.Failed + b.Refused
		if n == 0 {
			continue
		}
		h := capErrH * float64(n) / float64(yMax)
		p(`<rect class="failed" x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="%s"/>`+"\n",
			x(time.Duration(i)*BucketWidth), errTop+capErrH-h, max(bw-0.3, 0.3), h, colFailed)
	}
	timeAxis(p, x, top, errTop+capErrH, span, height)
	p("</svg>\n")
	return w.Bytes()
}
