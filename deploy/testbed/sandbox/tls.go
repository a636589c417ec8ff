package sandbox

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Names of the TLS files WriteTLSCert writes into Dir.
const (
	tlsCertFile = "tls-cert.pem"
	tlsKeyFile  = "tls-key.pem"
)

// WriteTLSCert generates a self-signed ECDSA P-256 certificate, valid for one
// day, whose SANs are hosts (IP addresses become IP SANs, anything else a DNS
// name), and writes it to Dir/tls-cert.pem (0644) and its key to
// Dir/tls-key.pem (0600, owned by the app user, who alone may read it). It
// returns the certificate path, which a client can use as its CA file. The
// app serves HTTPS with it once started with TLSEnv (see SetAppEnv).
func (n *Node) WriteTLSCert(hosts ...string) (certPEMPath string, err error) {
	if len(hosts) == 0 {
		return "", errors.New("writing TLS certificate: no hosts")
	}
	if !n.userKnown {
		return "", fmt.Errorf("writing TLS certificate: app user %s does not exist", n.AppUser)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generating TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return "", fmt.Errorf("generating TLS serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"patchagent sandbox"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: it is its own root
	}
	for _, h := range hosts {
		if a, err := netip.ParseAddr(h); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.AsSlice()))
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", fmt.Errorf("creating TLS certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("encoding TLS key: %w", err)
	}
	certPath := filepath.Join(n.Opts.Dir, tlsCertFile)
	keyPath := filepath.Join(n.Opts.Dir, tlsKeyFile)
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		0o600, int(n.UID), int(n.GID)); err != nil {
		return "", fmt.Errorf("writing TLS key: %w", err)
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		0o644, 0, 0); err != nil {
		return "", fmt.Errorf("writing TLS certificate: %w", err)
	}
	return certPath, nil
}

// TLSEnv returns the app environment (TLS_CERT, TLS_KEY) that makes it serve
// HTTPS with the certificate at certPath (from WriteTLSCert) and its key.
func (n *Node) TLSEnv(certPath string) map[string]string {
	return map[string]string{
		"TLS_CERT": certPath,
		"TLS_KEY":  filepath.Join(filepath.Dir(certPath), tlsKeyFile),
	}
}

// HTTPSURL is URL with the https scheme, for an app started with TLSEnv.
func (n *Node) HTTPSURL(path string, v6 bool) string {
	return "https" + n.URL(path, v6)[len("http"):]
}

// TLSClient returns an http.Client like Client (sockets in the client netns,
// no timeout, redirects followed) that trusts only the PEM certificates in
// caFile.
func (n *Node) TLSClient(v6 bool, caFile string) (*http.Client, error) {
	cfg, err := caConfig(caFile)
	if err != nil {
		return nil, err
	}
	tr := n.transport(v6, true)
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// caConfig returns a client TLS config that trusts only the PEM
// certificates in caFile.
func caConfig(caFile string) (*tls.Config, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("reading CA file %s: no PEM certificate", caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// writeFileAtomic writes b to a temporary file next to path, sets its mode
// and owner, and renames it over path.
func writeFileAtomic(path string, b []byte, mode os.FileMode, uid, gid int) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Chown(uid, gid); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
