package main

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// logFormats are the values of --log-format.
var logFormats = []string{"auto", "text", "json", "journal"}

// newLogger logs to stderr in format: text (readable: a terminal, the SSM
// console), json (one object a line), journal (for systemd's journal: each
// line starts with its syslog priority, and the journal stamps the time),
// or auto: journal when stderr is the journal stream systemd connected
// (the daemon, a oneshot unit's reconcile), else text. A hook command run
// by the SSM agent inherits the agent's JOURNAL_STREAM but writes to a
// pipe: text.
func newLogger(level, format string, stderr io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if format == "auto" {
		format = "text"
		if onJournal(os.Getenv("JOURNAL_STREAM"), stderr) {
			format = "journal"
		}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch format {
	case "text":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "journal":
		encCfg.TimeKey, encCfg.EncodeLevel = "", zapcore.CapitalLevelEncoder
		enc = journalEncoder{zapcore.NewConsoleEncoder(encCfg)}
	default:
		return nil, fmt.Errorf("--log-format %q: want auto, text, json or journal", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl)), nil
}

// onJournal reports whether w is the stream systemd connected to the
// journal: systemd sets JOURNAL_STREAM (stream) to that stream's
// "device:inode" (systemd.exec(5)), which a child inherits with the
// environment even when its stderr is another file.
func onJournal(stream string, w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || stream == "" {
		return false
	}
	var dev, ino uint64
	if _, err := fmt.Sscanf(stream, "%d:%d", &dev, &ino); err != nil {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Dev) == dev && st.Ino == ino
}

// journalEncoder is the console encoder with each line prefixed by its
// level's syslog priority, "<3>" for an error: journald takes it for the
// entry's PRIORITY (SyslogLevelPrefix=, on by default), so that
// journalctl -p filters and colours patchagent's lines.
type journalEncoder struct{ zapcore.Encoder }

var journalLines = buffer.NewPool()

func (e journalEncoder) Clone() zapcore.Encoder { return journalEncoder{e.Encoder.Clone()} }

func (e journalEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	line, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return nil, err
	}
	defer line.Free()
	b := journalLines.Get()
	b.AppendByte('<')
	b.AppendInt(int64(priority(ent.Level)))
	b.AppendByte('>')
	_, _ = b.Write(line.Bytes())
	return b, nil
}

// priority is the syslog priority of a zap level.
func priority(l zapcore.Level) journal.Priority {
	switch {
	case l <= zapcore.DebugLevel:
		return journal.PriDebug
	case l == zapcore.InfoLevel:
		return journal.PriInfo
	case l == zapcore.WarnLevel:
		return journal.PriWarning
	case l == zapcore.ErrorLevel:
		return journal.PriErr
	}
	return journal.PriCrit // DPanic, Panic, Fatal
}
