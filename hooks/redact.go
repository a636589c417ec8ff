package hooks

import "regexp"

// secretKey matches the names of the settings whose values are credentials:
// .npmrc's _authToken, _auth and _password (also as
// //registry.example/:_authToken=...), and password or token under any
// prefix (NPM_TOKEN, proxy_password). Case is ignored.
const secretKey = `(?i)(_authToken|_auth|_password|password|token)`

// secretSep is what comes between such a key and its value: = or :, maybe
// after the key's closing quote (JSON), with blanks but no newline around
// it (a key at the end of a line does not take the next line's first word).
const secretSep = `["']?[ \t]*[=:][ \t]*`

// redactions are applied in order by redact. A quoted value is replaced
// whole (it may hold blanks), before the bare-value rule, which then no
// longer matches it.
var redactions = []struct {
	re   *regexp.Regexp
	repl string
}{
	// scheme://user:pass@ and scheme://token@: everything between :// and
	// the last @ before the host ends (/, ?, #, a blank or a quote).
	{regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#"'<>\\]+@`), "${1}***@"},
	// Authorization: Bearer xyz, Basic xyz, or a bare value.
	{regexp.MustCompile(`(?i)(authorization` + secretSep + `["']?(?:(?:bearer|basic|token)[ \t]+)?)[^\s"',;]+`), "${1}***"},
	// key="value", "key": "value", key='value'.
	{regexp.MustCompile(secretKey + `(` + secretSep + `)"(?:[^"\\]|\\.)*"`), `${1}${2}"***"`},
	{regexp.MustCompile(secretKey + `(` + secretSep + `)'[^']*'`), `${1}${2}'***'`},
	// key=value, key: value, ?token=value&.
	{regexp.MustCompile(secretKey + `(` + secretSep + `)[^\s"'&,;]+`), "${1}${2}***"},
}

// redact hides the credentials an external program may print, before its
// output goes into an error, a report or a log: the userinfo of URLs
// (https://user:pass@registry.example/ becomes https://***@registry.example/),
// the values of _authToken, _auth, _password, password and token settings
// (npm echoes .npmrc lines) and Authorization header values become ***.
// Everything else is kept: package specs (name@1.2.3), addresses outside
// URLs (a@b.c), email= settings.
func redact(s string) string {
	for _, r := range redactions {
		s = r.re.ReplaceAllString(s, r.repl)
	}
	return s
}
