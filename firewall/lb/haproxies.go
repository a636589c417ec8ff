package lb

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// HAProxies takes the node's server out of several HAProxy instances at
// once, each through its own runtime API: an HA pair (keepalived, or two
// LBs behind DNS) where each instance balances to the node, and either
// would send it requests the block refuses. Every change goes to all, in
// parallel, each with the whole deadline; it is done when all are. The
// state journal holds one HAProxyRecord per instance, so each is put back
// as it was found (see HAProxy). One instance is HAProxy's behaviour and
// words exactly.
type HAProxies []*HAProxy

// Record reads each server's admin state (HAProxy.record) into one
// record, a list of HAProxyRecord; carried is a record the last cycle
// could not put back, whose entry for a server stands.
func (hs HAProxies) Record(ctx context.Context, carried json.RawMessage) (json.RawMessage, error) {
	prior, _ := decodeHAProxyRecords(carried) // unreadable: nothing carried, each read anew
	recs := make([]HAProxyRecord, len(hs))
	for i, h := range hs {
		var c *HAProxyRecord
		if j := slices.IndexFunc(prior, func(r HAProxyRecord) bool { return r.of(h) }); j >= 0 {
			c = &prior[j]
		}
		rec, err := h.record(ctx, c)
		if err != nil {
			return nil, hs.at(h, err)
		}
		recs[i] = rec
	}
	return json.Marshal(recs)
}

// Restore hands each server its entry of rec (from Record; the one-server
// record of the first versions is read as one entry). A server with no
// entry (added to the config since) is drained and readied as by an
// earlier version; an entry no server has (one taken out of the config)
// is not used.
func (hs HAProxies) Restore(rec json.RawMessage) error {
	recs, err := decodeHAProxyRecords(rec)
	if err != nil {
		return fmt.Errorf("the recorded HAProxy server states: %w", err)
	}
	var errs []error
	for _, h := range hs {
		h.setFound("")
		if j := slices.IndexFunc(recs, func(r HAProxyRecord) bool { return r.of(h) }); j >= 0 {
			errs = append(errs, h.restore(recs[j]))
		}
	}
	return joinErrors(errs)
}

// decodeHAProxyRecords reads Record's list, or one HAProxy's record.
func decodeHAProxyRecords(b json.RawMessage) ([]HAProxyRecord, error) {
	s := strings.TrimSpace(string(b))
	if s == "" || s == "null" {
		return nil, nil
	}
	if strings.HasPrefix(s, "{") {
		s = "[" + s + "]"
	}
	var recs []HAProxyRecord
	err := json.Unmarshal([]byte(s), &recs)
	return recs, err
}

// TakeOut takes the server out of every instance (HAProxy.TakeOut).
func (hs HAProxies) TakeOut(ctx context.Context, deadline time.Duration) (Wait, error) {
	return hs.each(func(h *HAProxy) (Wait, error) { return h.TakeOut(ctx, deadline) })
}

// PutBack puts the server back in every instance (HAProxy.PutBack); one
// that fails does not keep the others out.
func (hs HAProxies) PutBack(ctx context.Context, deadline time.Duration) (Wait, error) {
	return hs.each(func(h *HAProxy) (Wait, error) { return h.PutBack(ctx, deadline) })
}

// SetOut sets every instance's server without waiting (HAProxy.SetOut).
func (hs HAProxies) SetOut(out bool) {
	hs.each(func(h *HAProxy) (Wait, error) { h.SetOut(out); return Wait{}, nil })
}

// each runs fn on every instance in parallel and sums up: in no rotation
// only if none is, what each said (with its runtime API), the longest
// wait, every error.
func (hs HAProxies) each(fn func(*HAProxy) (Wait, error)) (Wait, error) {
	ws, errs := make([]Wait, len(hs)), make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Go(func() { ws[i], errs[i] = fn(h) })
	}
	wg.Wait()
	if len(hs) == 1 {
		return ws[0], errs[0]
	}
	sum := Wait{NotIn: true}
	var by []string
	for i, h := range hs {
		if errs[i] != nil {
			errs[i] = hs.at(h, errs[i])
		}
		by = append(by, fmt.Sprintf("%s at %s", ws[i].By, h.Socket))
		sum.NotIn = sum.NotIn && ws[i].NotIn
		sum.Took = max(sum.Took, ws[i].Took)
	}
	if err := joinErrors(errs); err != nil {
		return Wait{Took: sum.Took}, err
	}
	sum.By = strings.Join(by, "; ")
	return sum, nil
}

// at names the instance in err when there are several.
func (hs HAProxies) at(h *HAProxy, err error) error {
	if len(hs) == 1 {
		return err
	}
	return fmt.Errorf("HAProxy at %s: %w", h.Socket, err)
}

// joinedErrors is errors.Join's on one line (the verdict is one).
type joinedErrors []error

func (e joinedErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e joinedErrors) Unwrap() []error { return e }

// joinErrors is nil when every error is, else the others, joined.
func joinErrors(errs []error) error {
	var e joinedErrors
	for _, err := range errs {
		if err != nil {
			e = append(e, err)
		}
	}
	if len(e) == 0 {
		return nil
	}
	return e
}
