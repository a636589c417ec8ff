package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
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
	native := false
	if format == "auto" {
		format = "text"
		if onJournal(os.Getenv("JOURNAL_STREAM"), stderr) {
			format, native = "journal", journalEnabled()
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
	core := zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl)
	if native {
		// On systemd's own stream with journald listening: each entry
		// goes to the journal natively, its fields as journal fields
		// (journalctl -u patchagent PHASE=pre), the same line as MESSAGE;
		// an entry journald refuses is written to stderr as above.
		core = &journalCore{LevelEnabler: lvl, line: enc.(journalEncoder).Encoder, fallback: core, send: journalSend}
	}
	return zap.New(core), nil
}

// The journal, for journalCore (variables: the tests replace them).
var (
	journalEnabled = journal.Enabled
	journalSend    = journal.Send
)

// journalCore sends each entry to the journal with its fields as journal
// fields, and writes it to fallback when that fails.
type journalCore struct {
	zapcore.LevelEnabler
	line     zapcore.Encoder // the journal line encoder: MESSAGE is its line, without the priority
	fields   []zapcore.Field // from With
	fallback zapcore.Core
	send     func(message string, priority journal.Priority, vars map[string]string) error
}

func (c *journalCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.line = c.line.Clone()
	for _, f := range fields {
		f.AddTo(clone.line)
	}
	clone.fields = append(append([]zapcore.Field(nil), c.fields...), fields...)
	clone.fallback = c.fallback.With(fields)
	return &clone
}

func (c *journalCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *journalCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	m := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(m)
	}
	vars := map[string]string{"SYSLOG_IDENTIFIER": "patchagent"}
	if ent.LoggerName != "" {
		vars["LOGGER"] = ent.LoggerName
	}
	for k, v := range m.Fields {
		vars[journalField(k)] = fmt.Sprint(v)
	}
	msg := ent.Message
	if line, err := c.line.EncodeEntry(ent, fields); err == nil {
		msg = string(bytes.TrimSuffix(line.Bytes(), []byte("\n")))
		line.Free()
	}
	if err := c.send(msg, priority(ent.Level), vars); err != nil {
		return c.fallback.Write(ent, fields)
	}
	return nil
}

func (c *journalCore) Sync() error { return c.fallback.Sync() }

// journalField is a zap field's key as a journal field name: upper case,
// [A-Z0-9_], not starting with "_" (trusted fields) or a digit, and not one
// of the journal's own names (then prefixed FIELD_).
func journalField(key string) string {
	b := make([]byte, 0, len(key))
	for _, r := range strings.ToUpper(key) {
		if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b = append(b, byte(r))
		} else {
			b = append(b, '_')
		}
	}
	name := strings.TrimLeft(string(b), "_0123456789")
	switch {
	case name == "", name == "MESSAGE", name == "MESSAGE_ID", name == "PRIORITY", name == "LOGGER",
		strings.HasPrefix(name, "CODE_"), strings.HasPrefix(name, "SYSLOG_"), name == "ERRNO":
		return "FIELD_" + strings.Trim(string(b), "_")
	}
	return name
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
