package ssm

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/patchagent/patchagent/agent"
)

// document is the part of an SSM Command document (schema 2.2) checked here.
type document struct {
	SchemaVersion string               `yaml:"schemaVersion"`
	Description   string               `yaml:"description"`
	Parameters    map[string]parameter `yaml:"parameters"`
	MainSteps     []step               `yaml:"mainSteps"`
}

type parameter struct {
	Type           string   `yaml:"type"`
	Description    string   `yaml:"description"`
	Default        *string  `yaml:"default"`
	AllowedPattern string   `yaml:"allowedPattern"`
	AllowedValues  []string `yaml:"allowedValues"`
	// InterpolationType ENV_VAR: SSM Agent 3.3.2746.0 and later pass the
	// value as the environment variable SSM_<name>, not pasted into the script.
	InterpolationType string `yaml:"interpolationType"`
}

type step struct {
	Action       string              `yaml:"action"`
	Name         string              `yaml:"name"`
	Precondition map[string][]string `yaml:"precondition"`
	Inputs       struct {
		WorkingDirectory string   `yaml:"workingDirectory"`
		TimeoutSeconds   string   `yaml:"timeoutSeconds"`
		RunCommand       []string `yaml:"runCommand"`
	} `yaml:"inputs"`
}

func load(t *testing.T, file string) ([]byte, document) {
	t.Helper()
	data, err := Content(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true) // a misspelt key is an error, not a silent default
	var d document
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return data, d
}

// budget is patchagent's own worst case for a phase with cfg (agent.Budget).
func budget(t *testing.T, phase string, cfg agent.Config) time.Duration {
	t.Helper()
	b, ok := agent.Budget(phase, cfg)
	if !ok {
		t.Fatalf("agent.Budget knows no phase %q", phase)
	}
	return b
}

func TestDocuments(t *testing.T) {
	cfg := agent.DefaultConfig()
	for _, ph := range Phases {
		t.Run(ph.File, func(t *testing.T) {
			data, d := load(t, ph.File)
			if d.SchemaVersion != "2.2" {
				t.Errorf("schemaVersion %q, want \"2.2\"", d.SchemaVersion)
			}
			if d.Description == "" {
				t.Error("no description")
			}
			checkParameters(t, d)
			if len(d.MainSteps) != 1 {
				t.Fatalf("%d steps, want exactly 1", len(d.MainSteps))
			}
			s := d.MainSteps[0]
			if s.Action != "aws:runShellScript" {
				t.Errorf("action %q, want aws:runShellScript", s.Action)
			}
			if !regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`).MatchString(s.Name) {
				t.Errorf("step name %q is not a valid step name", s.Name)
			}
			if got := s.Precondition["StringEquals"]; len(s.Precondition) != 1 || len(got) != 2 || got[0] != "platformType" || got[1] != "Linux" {
				t.Errorf("precondition %v, want StringEquals: [platformType, Linux]", s.Precondition)
			}
			if s.Inputs.WorkingDirectory != "" && !strings.HasPrefix(s.Inputs.WorkingDirectory, "/") {
				t.Errorf("workingDirectory %q is not absolute", s.Inputs.WorkingDirectory)
			}

			// timeoutSeconds: a string of digits (the agent falls back to
			// 3600 on anything invalid), within SSM's range, and above
			// patchagent's own budget with a margin for copies and hand-over.
			secs, err := strconv.Atoi(s.Inputs.TimeoutSeconds)
			if err != nil || strconv.Itoa(secs) != s.Inputs.TimeoutSeconds {
				t.Fatalf("timeoutSeconds %q is not a plain number of seconds", s.Inputs.TimeoutSeconds)
			}
			if secs < 5 || secs > 172800 {
				t.Errorf("timeoutSeconds %d outside SSM's 5..172800 (the agent would use 3600)", secs)
			}
			b := budget(t, ph.Command, cfg)
			min := max(b+b/2, b+time.Minute)
			if time.Duration(secs)*time.Second < min {
				t.Errorf("timeoutSeconds %d: patchagent %s may take %s with the default config; want at least %s", secs, ph.Command, b, min)
			}
			if want := "patchagent's own budget with the default config is " + strconv.Itoa(int(b.Seconds())) + " s"; !strings.Contains(string(data), want) {
				t.Errorf("the header comment does not say %q (update the computation in the comment)", want)
			}
			if want := "# Timeout: " + s.Inputs.TimeoutSeconds + " s."; !strings.Contains(string(data), want) {
				t.Errorf("the header comment does not say %q", want)
			}

			// The command: patchagent's phase with the config parameter, read
			// from SSM_ConfigPath; the binary's path named once, so that a
			// missing binary is reported before the call.
			script := strings.Join(s.Inputs.RunCommand, "\n")
			call := regexp.MustCompile(`(?m)^"\$patchagent" ` + ph.Command + ` --config "\$SSM_ConfigPath"( |$)`)
			if !call.MatchString(script) {
				t.Errorf("runCommand does not call \"$patchagent\" %s --config \"$SSM_ConfigPath\":\n%s", ph.Command, script)
			}
			if !regexp.MustCompile(`(?m)^patchagent=/usr/bin/patchagent$`).MatchString(script) {
				t.Errorf("runCommand does not set patchagent=/usr/bin/patchagent:\n%s", script)
			}
			if s.Inputs.RunCommand[0] != "set -eu" {
				t.Errorf("runCommand starts with %q, want set -eu", s.Inputs.RunCommand[0])
			}
			if n := strings.Count(script, "/usr/bin/patchagent"); n != 1 {
				t.Errorf("runCommand names /usr/bin/patchagent %d times, want 1", n)
			}
			if strings.Contains(script, "{{") && len(regexp.MustCompile(`\{\{ *(\w+) *\}\}`).FindAllString(script, -1)) != strings.Count(script, "{{") {
				t.Error("runCommand has a malformed {{ }} reference")
			}
			for _, m := range regexp.MustCompile(`\{\{ *(\w+) *\}\}`).FindAllStringSubmatch(script, -1) {
				if _, ok := d.Parameters[m[1]]; !ok {
					t.Errorf("runCommand uses undeclared parameter %s", m[1])
				}
			}
			// Each parameter: {{ }} only in the fallback for agents before
			// ENV_VAR, which runs only when the agent set no SSM_ variable.
			for name := range d.Parameters {
				fallback := `if [ -z "${SSM_` + name + `+x}" ]; then SSM_` + name + `='{{ ` + name + ` }}'; fi`
				if !slices.Contains(s.Inputs.RunCommand, fallback) {
					t.Errorf("runCommand lacks the line %s", fallback)
				}
				if n := len(regexp.MustCompile(`\{\{ *`+name+` *\}\}`).FindAllString(script, -1)); n != 1 {
					t.Errorf("runCommand substitutes {{ %s }} %d times, want once, in the fallback", name, n)
				}
			}
			// SSM Agent's special exit codes (reboot, skip remaining steps,
			// killed) must never come from a hook: not even as a number.
			for _, c := range []string{"137", "168", "169", "194"} {
				if regexp.MustCompile(`\b` + c + `\b`).Match(data) {
					t.Errorf("the document mentions %s, one of SSM Agent's special exit codes", c)
				}
			}
			shellSyntax(t, substitute(script, d))
		})
	}
}

func checkParameters(t *testing.T, d document) {
	t.Helper()
	if _, ok := d.Parameters["ConfigPath"]; !ok {
		t.Error("no ConfigPath parameter")
	}
	for name, p := range d.Parameters {
		if p.Type != "String" {
			t.Errorf("parameter %s: type %q, want String", name, p.Type)
		}
		if p.Description == "" {
			t.Errorf("parameter %s: no description", name)
		}
		if p.Default == nil {
			t.Errorf("parameter %s: no default (the patch document passes no parameters to hooks)", name)
			continue
		}
		if p.InterpolationType != "ENV_VAR" {
			t.Errorf("parameter %s: interpolationType %q, want ENV_VAR", name, p.InterpolationType)
		}
		if p.AllowedPattern == "" && len(p.AllowedValues) == 0 {
			t.Errorf("parameter %s: neither allowedPattern nor allowedValues", name)
		}
		if p.AllowedPattern != "" {
			re, err := regexp.Compile(p.AllowedPattern)
			if err != nil {
				t.Errorf("parameter %s: allowedPattern does not compile: %v", name, err)
				continue
			}
			if !strings.HasPrefix(p.AllowedPattern, "^") || !strings.HasSuffix(p.AllowedPattern, "$") {
				t.Errorf("parameter %s: allowedPattern %q is not anchored", name, p.AllowedPattern)
			}
			if !re.MatchString(*p.Default) {
				t.Errorf("parameter %s: default %q does not match %q", name, *p.Default, p.AllowedPattern)
			}
			// The value ends up in the shell inside single quotes.
			for _, bad := range []string{"'", `"`, "$(id)", "`id`", ";", " ", "a\nb", "*"} {
				if re.MatchString("/etc/" + bad) {
					t.Errorf("parameter %s: allowedPattern accepts %q", name, "/etc/"+bad)
				}
			}
			if name == "ConfigPath" && re.MatchString("etc/patchagent/config.yaml") {
				t.Errorf("parameter %s: allowedPattern accepts a relative path", name)
			}
		}
	}
	if p, ok := d.Parameters["ConfigPath"]; ok && p.Default != nil && *p.Default != agent.DefaultConfigPath {
		t.Errorf("ConfigPath default %q, want patchagent's %q", *p.Default, agent.DefaultConfigPath)
	}
}

func substitute(script string, d document) string {
	return regexp.MustCompile(`\{\{ *(\w+) *\}\}`).ReplaceAllStringFunc(script, func(m string) string {
		name := strings.Trim(m, "{} ")
		if p, ok := d.Parameters[name]; ok && p.Default != nil {
			return *p.Default
		}
		return m
	})
}

func shellSyntax(t *testing.T, script string) {
	t.Helper()
	for _, sh := range []string{"sh", "bash", "dash"} {
		if _, err := exec.LookPath(sh); err != nil {
			continue
		}
		out, err := exec.Command(sh, "-n", "-c", script).CombinedOutput()
		if err != nil {
			t.Errorf("%s -n: %v\n%s\nscript:\n%s", sh, err, out, script)
		}
	}
}

// scripts returns each document's script as an agent before ENV_VAR runs
// it (its {{ }} substituted with the defaults); it skips without sh.
func scripts(t *testing.T) map[Phase]string {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	out := map[Phase]string{}
	for _, ph := range Phases {
		_, d := load(t, ph.File)
		out[ph] = substitute(strings.Join(d.MainSteps[0].Inputs.RunCommand, "\n"), d)
	}
	return out
}

// runScript runs a script of scripts with patchagent at bin and env added
// to the environment (SSM_ variables of the test's own removed), and
// returns its stdout and exit status.
func runScript(t *testing.T, script, bin string, env ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", strings.Replace(script, "/usr/bin/patchagent", bin, 1))
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SSM_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestRunCommandExitStatus runs each document's script with a fake
// patchagent: its stdout passes through untouched (the verdict stays the
// first line), 0-3 pass through, anything else is reported as 1. The config
// path is SSM_ConfigPath when the agent sets it, else the substituted value.
func TestRunCommandExitStatus(t *testing.T) {
	for ph, script := range scripts(t) {
		dir := t.TempDir()
		fake := filepath.Join(dir, "patchagent")
		argsFile := filepath.Join(dir, "args")
		if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$@\" > \"$ARGS\"\necho \"$PHASE ok: verdict\"\necho detail\nexit \"$CODE\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		for code, want := range map[int]int{0: 0, 1: 1, 2: 2, 3: 3, 4: 1, 137: 1, 168: 1, 169: 1, 194: 1, 127: 1} {
			for config, env := range map[string][]string{
				agent.DefaultConfigPath:    nil, // an agent before ENV_VAR
				"/etc/app/patchagent.yaml": {"SSM_ConfigPath=/etc/app/patchagent.yaml"},
			} {
				out, got := runScript(t, script, fake, append(env, "ARGS="+argsFile, "PHASE="+ph.Command, "CODE="+strconv.Itoa(code))...)
				if got != want {
					t.Errorf("%s: patchagent exiting %d: script exited %d, want %d", ph.File, code, got, want)
				}
				if first, _, _ := strings.Cut(out, "\n"); first != ph.Command+" ok: verdict" {
					t.Errorf("%s: first line of stdout %q, want patchagent's verdict", ph.File, first)
				}
				args, _ := os.ReadFile(argsFile)
				if want := ph.Command + " --config " + config + "\n"; string(args) != want {
					t.Errorf("%s: patchagent called with %q, want %q (env %v)", ph.File, args, want, env)
				}
			}
		}
	}
}

// TestMissingPatchagent: on a node without patchagent each document fails
// with status 1 (not the shell's 127) and a first line that says how to
// install it: the package, or the Distributor package through
// AWS-ConfigureAWSPackage.
func TestMissingPatchagent(t *testing.T) {
	for ph, script := range scripts(t) {
		missing := filepath.Join(t.TempDir(), "patchagent")
		out, code := runScript(t, script, missing)
		if code != 1 {
			t.Errorf("%s: without patchagent the script exited %d, want 1", ph.File, code)
		}
		first, _, _ := strings.Cut(out, "\n")
		for _, want := range []string{"patchagent " + ph.Command + ": not installed", missing, "patchagent package", "AWS-ConfigureAWSPackage", "name patchagent"} {
			if !strings.Contains(first, want) {
				t.Errorf("%s: first line %q does not say %q", ph.File, first, want)
			}
		}
	}
}
