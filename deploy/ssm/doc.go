// Package ssm holds patchagent's three SSM Command documents, the hooks of
// AWS-RunPatchBaselineWithHooks, embedded so that the CloudFormation and
// Terraform tests compare their copies with these files, the one source.
package ssm

import "embed"

// Phase is one hook document: the patchagent command it runs and its file.
type Phase struct {
	Command string // pre, post or exit
	Hook    string // PreInstall, PostInstall or OnExit (the patch document's parameter prefix)
	File    string // file name in this directory
}

// Phases lists the three documents in hook order.
var Phases = []Phase{
	{Command: "pre", Hook: "PreInstall", File: "patchagent-pre-install.yaml"},
	{Command: "post", Hook: "PostInstall", File: "patchagent-post-install.yaml"},
	{Command: "exit", Hook: "OnExit", File: "patchagent-on-exit.yaml"},
}

// Files holds the documents' bytes.
//
//go:embed patchagent-pre-install.yaml patchagent-post-install.yaml patchagent-on-exit.yaml
var Files embed.FS

// Content returns the bytes of a document file of Phases.
func Content(file string) ([]byte, error) { return Files.ReadFile(file) }
