package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
)

// streamOf is what systemd would put in JOURNAL_STREAM for f: its
// device:inode.
func streamOf(t *testing.T, f *os.File) string {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// tempFile stands for the journal stream systemd connects to the daemon's
// stderr: its dev:ino goes in JOURNAL_STREAM.
func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// pipe stands for the stderr the SSM agent gives a hook command, which
// inherits the agent's JOURNAL_STREAM.
func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func TestOnJournal(t *testing.T) {
	journal := tempFile(t)
	_, hook := pipe(t)
	stream := streamOf(t, journal)
	tests := []struct {
		name   string
		stream string
		w      io.Writer
		want   bool
	}{
		{"systemd's stream", stream, journal, true},
		{"a pipe, JOURNAL_STREAM inherited", stream, hook, false},
		{"no JOURNAL_STREAM", "", journal, false},
		{"garbage JOURNAL_STREAM", "journal", journal, false},
		{"another inode", strings.Split(stream, ":")[0] + ":1", journal, false},
		{"not a file", stream, &strings.Builder{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := onJournal(tt.stream, tt.w); got != tt.want {
				t.Errorf("onJournal(%q) = %v, want %v", tt.stream, got, tt.want)
			}
		})
	}
}

// logLines logs one line at each level through newLogger(level debug,
// format) to a file standing for stderr, and returns what it wrote.
func logLines(t *testing.T, format string, stderr *os.File) []string {
	t.Helper()
	log, err := newLogger("debug", format, stderr)
	if err != nil {
		t.Fatal(err)
	}
	log = log.Named("agent")
	log.Debug("polling", zap.Int("n", 1))
	log.Info("phase started", zap.String("phase", "pre"))
	log.Warn("drain timed out")
	log.Error("phase failed", zap.String("error", "a\nb"))
	_ = log.Sync()
	b, err := os.ReadFile(stderr.Name())
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestLogFormats(t *testing.T) {
	t.Run("journal", func(t *testing.T) {
		got := logLines(t, "journal", tempFile(t))
		want := []string{
			"<7>DEBUG\tagent\tpolling\t{\"n\": 1}",
			"<6>INFO\tagent\tphase started\t{\"phase\": \"pre\"}",
			"<4>WARN\tagent\tdrain timed out",
			"<3>ERROR\tagent\tphase failed\t{\"error\": \"a\\nb\"}",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
	t.Run("json", func(t *testing.T) {
		got := logLines(t, "json", tempFile(t))
		var line struct{ Level, Logger, Msg, Error, TS string }
		if len(got) != 4 || json.Unmarshal([]byte(got[3]), &line) != nil ||
			line.Level != "error" || line.Logger != "agent" || line.Msg != "phase failed" || line.Error != "a\nb" || line.TS == "" {
			t.Errorf("not one JSON object a line: %q", got)
		}
	})
	t.Run("text", func(t *testing.T) {
		got := logLines(t, "text", tempFile(t))
		// 2006-01-02T15:04:05.000Z0700 INFO agent phase started {...}
		if len(got) != 4 || strings.HasPrefix(got[1], "<") ||
			!strings.HasSuffix(got[1], "\tINFO\tagent\tphase started\t{\"phase\": \"pre\"}") || got[1][4] != '-' {
			t.Errorf("not readable text: %q", got)
		}
	})
	if _, err := newLogger("info", "xml", os.Stderr); err == nil || err.Error() != `--log-format "xml": want auto, text, json or journal` {
		t.Errorf("--log-format xml: %v", err)
	}
}

// TestLogFormatAuto: journal on the stream systemd connected, text on the
// SSM agent's pipe even with its JOURNAL_STREAM, and text without one.
func TestLogFormatAuto(t *testing.T) {
	journal := tempFile(t)
	t.Setenv("JOURNAL_STREAM", streamOf(t, journal))
	if got := logLines(t, "auto", journal); !strings.HasPrefix(got[1], "<6>INFO\tagent\tphase started") {
		t.Errorf("under systemd: %q", got)
	}
	// A hook's stderr: a pipe to the SSM agent. Read what is written there.
	r, w := pipe(t)
	log, err := newLogger("info", "auto", w)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("phase started")
	w.Close()
	b := make([]byte, 4096)
	n, _ := r.Read(b)
	if line := string(b[:n]); strings.HasPrefix(line, "<") || strings.HasPrefix(line, "{") || !strings.Contains(line, "\tINFO\tphase started\n") {
		t.Errorf("under SSM: %q", line)
	}
}
