package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
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

// noJournald makes journald absent for the test (the host's may listen).
func noJournald(t *testing.T) {
	enabled := journalEnabled
	journalEnabled = func() bool { return false }
	t.Cleanup(func() { journalEnabled = enabled })
}

// TestLogToTheJournalNatively: auto on systemd's stream with journald
// listening sends each entry natively, its fields as journal fields and
// its line as MESSAGE, with the level's priority; an entry journald
// refuses goes to stderr as a priority-prefixed line.
func TestLogToTheJournalNatively(t *testing.T) {
	type entry struct {
		msg  string
		pri  journal.Priority
		vars map[string]string
	}
	var sent []entry
	fail := false
	enabled, send := journalEnabled, journalSend
	t.Cleanup(func() { journalEnabled, journalSend = enabled, send })
	journalEnabled = func() bool { return true }
	journalSend = func(msg string, pri journal.Priority, vars map[string]string) error {
		if fail {
			return errors.New("journald gone")
		}
		sent = append(sent, entry{msg, pri, vars})
		return nil
	}
	stream := tempFile(t)
	t.Setenv("JOURNAL_STREAM", streamOf(t, stream))
	log, err := newLogger("info", "auto", stream)
	if err != nil {
		t.Fatal(err)
	}
	agentLog := log.Named("agent").With(zap.String("phase", "pre"))
	agentLog.Warn("drain timed out", zap.Int("conns", 3), zap.String("message", "x"))
	log.Debug("not at info")
	if len(sent) != 1 {
		t.Fatalf("sent %d entries, want 1: %+v", len(sent), sent)
	}
	e := sent[0]
	want := map[string]string{"SYSLOG_IDENTIFIER": "patchagent", "LOGGER": "agent", "PHASE": "pre", "CONNS": "3", "FIELD_MESSAGE": "x"}
	wantMsg := "WARN\tagent\tdrain timed out\t{\"phase\": \"pre\", \"conns\": 3, \"message\": \"x\"}"
	if e.pri != journal.PriWarning || !reflect.DeepEqual(e.vars, want) || e.msg != wantMsg {
		t.Errorf("sent %+v, want priority %d, vars %v and the line as MESSAGE", e, journal.PriWarning, want)
	}
	fail = true
	agentLog.Error("journald refused this")
	b, _ := os.ReadFile(stream.Name())
	if !strings.Contains(string(b), "<3>ERROR\tagent\tjournald refused this\t{\"phase\": \"pre\"}") {
		t.Errorf("a refused entry is not on stderr: %q", b)
	}
}

// TestLogFormatAuto: journal on the stream systemd connected, text on the
// SSM agent's pipe even with its JOURNAL_STREAM, and text without one.
func TestLogFormatAuto(t *testing.T) {
	noJournald(t)
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
