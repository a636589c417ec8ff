package awslb

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// AEMM in IMDSv2-only mode refuses a request without a token, and
// LookupIdentity (which gets one first) reads the identity it serves.
func TestLookupIdentityFromAEMMInIMDSv2OnlyMode(t *testing.T) {
	t.Parallel()
	url := startAEMM(t, "")

	for _, path := range []string{"/latest/dynamic/instance-identity/document", "/latest/meta-data/instance-id"} {
		resp, err := http.Get(url + path) // IMDSv1: no token
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET %s without a token: %s, want 401 (is AEMM in IMDSv2-only mode?)", path, resp.Status)
		}
	}

	got, err := LookupIdentity(context.Background(), NewIMDSClient(url))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("LookupIdentity = %+v, want %+v", got, want)
	}
}

func TestLifecycleStateInService(t *testing.T) {
	t.Parallel()
	// AEMM's root command serves the lifecycle path; its state turns
	// Terminated once the termination delay (default 0) has passed.
	url := startAEMM(t, "", "--asg-termination-delay-sec", "3600")

	state, inASG, err := LifecycleState(context.Background(), NewIMDSClient(url))
	if err != nil || !inASG || state != "InService" {
		t.Fatalf("LifecycleState = %q, %v, %v; want InService, true, nil", state, inASG, err)
	}
}

func TestLifecycleStateNotInASG(t *testing.T) {
	t.Parallel()
	// AEMM's events command mocks no Auto Scaling path: the lifecycle
	// state is 404, as on an instance in no Auto Scaling group.
	url := startAEMM(t, "events")
	client := NewIMDSClient(url)

	state, inASG, err := LifecycleState(context.Background(), client)
	if err != nil || inASG || state != "" {
		t.Fatalf("LifecycleState = %q, %v, %v; want \"\", false, nil", state, inASG, err)
	}
	if got, err := LookupIdentity(context.Background(), client); err != nil || got != want {
		t.Fatalf("LookupIdentity = %+v, %v; want %+v", got, err, want)
	}
}

// Nothing listens at the endpoint: both calls fail fast, saying where and
// why, and the lifecycle read does not take it for "not in an ASG".
func TestNothingListening(t *testing.T) {
	t.Parallel()
	url := "http://127.0.0.1:" + freePort(t)
	client := NewIMDSClient(url)

	start := time.Now()
	_, err := LookupIdentity(context.Background(), client)
	took := time.Since(start)
	if err == nil {
		t.Fatal("LookupIdentity succeeded with nothing listening")
	}
	t.Logf("after %s: %v", took, err)
	// Connection refused is retried: 3 attempts, at most 1s apart.
	if took > 4*time.Second {
		t.Errorf("LookupIdentity took %s, want a few seconds at most", took)
	}
	for _, part := range []string{
		"instance identity from IMDSv2 at " + url,
		"connection refused",
		"is this an EC2 instance, and is the metadata hop limit at least 1 for the host?",
	} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error lacks %q", part)
		}
	}

	state, inASG, err := LifecycleState(context.Background(), client)
	if err == nil || inASG || state != "" {
		t.Fatalf("LifecycleState = %q, %v, %v; want an error", state, inASG, err)
	}
	if !strings.Contains(err.Error(), "from IMDSv2 at "+url) {
		t.Errorf("LifecycleState error lacks the endpoint: %v", err)
	}
}

// A server that accepts connections and never answers: the lookup gives
// up at its bound, or at ctx's deadline if sooner.
func TestSilentServer(t *testing.T) {
	t.Parallel()
	url := silentServer(t)

	// A client each: one client's token fetch is shared by its calls, so
	// a second call waits for the first one's.
	t.Run("own bound", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		_, err := LookupIdentity(context.Background(), NewIMDSClient(url))
		took := time.Since(start)
		t.Logf("after %s: %v", took, err)
		if err == nil || !strings.Contains(err.Error(), "instance identity from IMDSv2 at "+url) {
			t.Fatalf("LookupIdentity error = %v", err)
		}
		if took > lookupTimeout+time.Second {
			t.Errorf("LookupIdentity took %s, want at most %s", took, lookupTimeout)
		}
	})
	t.Run("ctx bound", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, _, err := LifecycleState(ctx, NewIMDSClient(url))
		took := time.Since(start)
		t.Logf("after %s: %v", took, err)
		if err == nil {
			t.Fatal("LifecycleState succeeded against a silent server")
		}
		if took > 2*time.Second {
			t.Errorf("LifecycleState took %s with a 1s ctx", took)
		}
	})
}

// No silent IMDSv1: where IMDS refuses tokens (404, as an IMDS without
// v2 would), the client fails instead of asking again without a token;
// the SDK's default client, for contrast, does ask without one.
func TestNoIMDSv1Fallback(t *testing.T) {
	t.Parallel()
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			http.NotFound(w, r)
			return
		}
		gets.Add(1)
		w.Write([]byte(`{"instanceId":"i-0v1","region":"us-east-1","availabilityZone":"us-east-1a"}`))
	}))
	defer srv.Close()

	if _, err := LookupIdentity(context.Background(), NewIMDSClient(srv.URL)); err == nil {
		t.Fatal("LookupIdentity succeeded without a token")
	}
	if n := gets.Load(); n != 0 {
		t.Fatalf("%d token-less GETs: the client fell back to IMDSv1", n)
	}

	defaults := imds.New(imds.Options{Endpoint: srv.URL})
	if _, err := defaults.GetInstanceIdentityDocument(context.Background(), nil); err != nil {
		t.Fatalf("SDK default client: %v", err)
	}
	if gets.Load() == 0 {
		t.Fatal("the SDK's default client did not fall back either: this test proves nothing")
	}
}

// silentServer accepts TCP connections on loopback and never reads or
// writes; it returns its URL and closes everything when t ends.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + l.Addr().String()
}
