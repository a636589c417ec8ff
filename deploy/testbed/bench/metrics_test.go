package main

import (
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// attempts builds one attempt every 100 ms from 0 from a pattern:
// '.' 200, 'r' refused, 'x' timed out, '5' answered 500.
func attempts(pattern string) []sandbox.Attempt {
	var out []sandbox.Attempt
	for i, c := range pattern {
		a := sandbox.Attempt{At: at(100 * i)}
		switch c {
		case '.':
			a.Status, a.Connected = 200, true
		case 'r':
			a.Refused = true
		case 'x':
			a.Err = "timeout"
		case '5':
			a.Status, a.Connected = 500, true
		}
		out = append(out, a)
	}
	return out
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{-1, 7}, 3},
	} {
		in := append([]float64(nil), tt.in...)
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.in[i] {
				t.Fatalf("median reordered its input")
			}
		}
	}
	if got := medianDuration([]time.Duration{3 * time.Second, time.Second, 2 * time.Second}); got != 2*time.Second {
		t.Errorf("medianDuration = %s", got)
	}
}

func TestOutOfService(t *testing.T) {
	for _, tt := range []struct {
		name           string
		pattern        string
		pre, exit, end int
		start, back    int // ms; -1: zero
		want           time.Duration
		wantNeverBack  bool
	}{
		// pre at 200 ms, refused from 300, exit at 900, back at 1100.
		{"refused then back", "...rrrrrrrr.....", 200, 900, 2000, 300, 1100, 800 * time.Millisecond, false},
		// dropped attempts count as out of service too.
		{"dropped", "..xxxx..", 100, 300, 1000, 200, 600, 400 * time.Millisecond, false},
		// answered before exit (unchecked boot) then refused again: back is
		// the start of the final run of 200s at or after exit.
		{"flapping before exit", "..rr..rr...", 100, 400, 2000, 200, 800, 600 * time.Millisecond, false},
		// in service all along after the exit start: back at the first 200 at exit.
		{"back before exit", "..rr......", 100, 600, 2000, 200, 600, 400 * time.Millisecond, false},
		// never back: until the end.
		{"never back", "..rrrr", 100, 300, 1000, 200, -1, 800 * time.Millisecond, true},
		{"never out", "......", 100, 300, 1000, -1, -1, 0, false},
		// a failure before pre does not count.
		{"failure before pre", "r..rr..", 200, 400, 1000, 300, 500, 200 * time.Millisecond, false},
		// a 500 is not in service.
		{"bad status", "..55..", 100, 300, 1000, 200, 400, 200 * time.Millisecond, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := outOfService(attempts(tt.pattern), at(tt.pre), at(tt.exit), at(tt.end))
			if tt.start >= 0 && !o.Start.Equal(at(tt.start)) || tt.start < 0 && !o.Start.IsZero() {
				t.Errorf("start %v, want %d ms", o.Start.Sub(t0), tt.start)
			}
			if tt.back >= 0 && !o.Back.Equal(at(tt.back)) || tt.back < 0 && !o.Back.IsZero() {
				t.Errorf("back %v, want %d ms", o.Back.Sub(t0), tt.back)
			}
			if o.Duration != tt.want || o.NeverBack() != tt.wantNeverBack {
				t.Errorf("duration %s never back %v, want %s %v", o.Duration, o.NeverBack(), tt.want, tt.wantNeverBack)
			}
		})
	}
}

func TestDeadTime(t *testing.T) {
	o := Overheads{Patch: 2 * time.Second, NPM: 500 * time.Millisecond, Reboot: time.Second, AppStart: 200 * time.Millisecond, InFlight: 7 * time.Second}
	if got := o.Sum(); got != 10700*time.Millisecond {
		t.Fatalf("sum %s", got)
	}
	if got := deadTime(15*time.Second, o); got != 4300*time.Millisecond {
		t.Fatalf("dead time %s", got)
	}
	if got := deadTime(10*time.Second, o); got != -700*time.Millisecond {
		t.Fatalf("dead time %s (negative kept)", got)
	}
}

func TestInFlightRemaining(t *testing.T) {
	starts := []time.Time{at(0), at(10), at(20)}
	durs := []time.Duration{3 * time.Second, 3 * time.Second, 8 * time.Second}
	if got := inFlightRemaining(at(220), starts, durs); got != 7800*time.Millisecond {
		t.Fatalf("remaining %s, want 7.8s", got)
	}
	if got := inFlightRemaining(at(9000), starts, durs); got != 0 {
		t.Fatalf("remaining %s after every request ended", got)
	}
	if got := inFlightRemaining(at(0), nil, nil); got != 0 {
		t.Fatalf("remaining %s with none", got)
	}
}

func TestAcceptedEarly(t *testing.T) {
	a := attempts("rr..5.rr..")
	// 100 ms buckets from t0: 3 ok in bucket 2, 4 in bucket 5, 9 in bucket 8.
	tl := make([]sandbox.Bucket, 10)
	tl[2].OK, tl[5].OK, tl[8].OK = 3, 4, 9
	tl[3].Refused = 5
	probe, load := acceptedEarly(a, tl, t0, at(200), at(600))
	if probe != 4 || load != 7 {
		t.Fatalf("probe %d load %d, want 4 (three 200s and a 500) and 7", probe, load)
	}
	// Bucket 5 straddles the end: not counted.
	if p, l := acceptedEarly(a, tl, t0, at(200), at(550)); p != 4 || l != 3 {
		t.Fatalf("window ending mid-bucket: %d %d, want 4 and 3", p, l)
	}
	if p, l := acceptedEarly(a, tl, t0, at(600), at(600)); p != 0 || l != 0 {
		t.Fatalf("empty window: %d %d", p, l)
	}
	if p, l := acceptedEarly(a, tl, t0, at(0), at(10000)); p != 6 || l != 16 {
		t.Fatalf("whole run: %d %d", p, l)
	}
}

func TestParseStatCPU(t *testing.T) {
	stat := "1234 (patch agent) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 130 0 0 20 0 8 0 100 0 0"
	got, err := parseStatCPU(stat, 100)
	if err != nil || got != 3.8 {
		t.Fatalf("cpu %v %v, want 3.8", got, err)
	}
	if _, err := parseStatCPU("garbage", 100); err == nil {
		t.Fatal("no error on garbage")
	}
}

func TestScripts(t *testing.T) {
	n, err := sandbox.Attach(sandbox.Options{Prefix: "pa-bnt", AppUser: "pa-bn-app"})
	if err != nil {
		t.Fatal(err)
	}
	n.NodeBin = "/usr/bin/node"
	pre, post, exit := scripts(n, false)
	for _, want := range []string{"set -e\n", "iptables -I INPUT -j DROP -p tcp --syn --destination-port 443 || exit 1\n", "sleep 5 \n",
		"runuser -u pa-bn-app -- env HOME=" + n.Home + " PM2_HOME=" + n.PM2Home + " PATH="} {
		if !strings.Contains(pre, want) {
			t.Errorf("pre lacks %q:\n%s", want, pre)
		}
	}
	if !strings.HasSuffix(strings.Split(pre, "\n")[7], " pm2 stop sample-app") {
		t.Errorf("pre's stop line: %q", strings.Split(pre, "\n")[7])
	}
	if !strings.HasPrefix(post, "cd "+n.AppDir+"\nnpm update \n") {
		t.Errorf("post:\n%s", post)
	}
	if !strings.Contains(exit, "\niptables -D INPUT -j DROP -p tcp --syn --destination-port \n") ||
		!strings.Contains(exit, " pm2 start sample-app\n") || !strings.Contains(exit, " pm2 pid sample-app\n") ||
		!strings.Contains(exit, "\n/usr/bin/curl -m 10 -vk -A \"\" http://localhost:443/health-check || exit 1\n") {
		t.Errorf("tutorial exit:\n%s", exit)
	}
	_, _, fixed := scripts(n, true)
	if !strings.Contains(fixed, "\niptables -D INPUT -j DROP -p tcp --syn --destination-port 443\n") {
		t.Errorf("fixed exit:\n%s", fixed)
	}
	if strings.Replace(fixed, "--destination-port 443\n", "--destination-port \n", 1) != exit {
		t.Error("tutorial-fixed differs from tutorial by more than the port")
	}
	// Apart from the runuser prefix and the placeholders, the scripts are verbatim.
	prefix := strings.SplitAfter(strings.Split(pre, "\n")[7], "PATH=")[1]
	prefix = "runuser -u pa-bn-app -- env HOME=" + n.Home + " PM2_HOME=" + n.PM2Home + " PATH=" + strings.Fields(prefix)[0] + " "
	back := strings.ReplaceAll(strings.ReplaceAll(exit, prefix, ""), "sample-app", "your_application")
	if back != tutorialExit {
		t.Errorf("exit is not the tutorial's:\n%s", back)
	}
}
