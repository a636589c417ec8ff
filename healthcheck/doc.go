// Package healthcheck decides whether an application answers, and waits until
// it does.
//
// It owns one probe and one policy:
//
//   - HTTP probes a URL the way the tutorial's
//     `curl -m 10 -vk -A "" http://localhost:443/health-check` does, but
//     strictly: one fresh connection per attempt (no keep-alive), never through
//     a proxy from the environment, a timeout covering the whole request
//     including the body, a capped body read, redirects not followed unless
//     asked, and only the configured status codes (default 2xx) accepted. For
//     TLS it can skip verification (curl -k), pin a CA bundle, and override the
//     Host header and SNI server name so that a certificate issued for the
//     public name verifies while the probe dials localhost.
//   - WaitHealthy repeats a probe until it has passed a number of times in a
//     row, or gives up at a deadline or when the context ends.
//
// Results are tri-state in the Go sense: a Result with Status Success; a Result
// with Status Failure and a short Reason (the transport error, the status code,
// a timeout; never the response body); or an error, which means only that the
// probe could not run at all (bad configuration).
//
// The package knows only URLs. It knows nothing of pm2,
// iptables, the configuration file or the patch window: the caller decides what
// to probe and what to do with the answer.
package healthcheck
