package controller

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// KeyFileExposed reports whether a key file with this mode is open to its
// group or to others (any of the 0o077 bits): the key signs the agent's
// challenge responses, so only its owner should read it.
func KeyFileExposed(mode fs.FileMode) bool { return mode.Perm()&0o077 != 0 }

// LoadKey reads an RSA private key in PEM (PKCS#1 or PKCS#8).
func LoadKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not a PKCS#1 or PKCS#8 private key: %w", path, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: %T is not an RSA key (brep verifies with RSA)", path, k)
	}
	return rk, nil
}

// Fingerprint is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo,
// what brep computes for the keys in its build-bot-agent-keys directory.
func Fingerprint(pub *rsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// SignChallenge signs the challenge as `openssl rsautl -sign` does (PKCS#1
// v1.5 over the raw bytes, no digest) and returns it base64-encoded and
// wrapped at 76 columns, as libbutl's encoder writes it.
func SignChallenge(key *rsa.PrivateKey, challenge string) (string, error) {
	if challenge == "" {
		return "", errors.New("empty challenge")
	}
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.Hash(0), []byte(challenge))
	if err != nil {
		return "", err
	}
	s := base64.StdEncoding.EncodeToString(sig)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\n")
		s = s[76:]
	}
	b.WriteString(s)
	return b.String(), nil
}
