package modal

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// routerClaims is what a router token carries: the one sandbox it reaches, its owner, and
// when it expires.
type routerClaims struct {
	Sandbox string `json:"sub"`
	Owner   string `json:"own"`
	Exp     int64  `json:"exp"`
}

// routerTokenLife is how long a router token lasts; clients refetch one through the control
// plane (which checks the API key again) when it nears its end or is refused, so a revoked
// key's router access ends within this.
const routerTokenLife = 15 * time.Minute

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// sign returns a JWT (HS256 under the server's key) for c.
func (s *Server) sign(c routerClaims) string {
	body, _ := json.Marshal(c)
	msg := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(body)
	return msg + "." + base64.RawURLEncoding.EncodeToString(s.mac(msg))
}

func (s *Server) mac(msg string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// verify checks a router token's signature and expiry.
func (s *Server) verify(tok string) (routerClaims, error) {
	var c routerClaims
	i := strings.LastIndexByte(tok, '.')
	if i < 0 {
		return c, errors.New("router token is malformed")
	}
	sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
	if err != nil || !hmac.Equal(sig, s.mac(tok[:i])) {
		return c, errors.New("router token is invalid (issued by another daemon, or before a restart)")
	}
	_, body, _ := strings.Cut(tok[:i], ".")
	b, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || json.Unmarshal(b, &c) != nil {
		return c, errors.New("router token is malformed")
	}
	if time.Now().Unix() >= c.Exp {
		return c, errors.New("router token has expired")
	}
	return c, nil
}

// authToken is AuthTokenGet's answer: JWT-shaped with an exp in a standard-base64 payload,
// which is all the JS client reads (it decodes the payload with atob). It proves nothing:
// every control-plane call is checked by its API key.
func authToken(now time.Time) string {
	body, _ := json.Marshal(map[string]int64{"exp": now.Add(time.Hour).Unix()})
	return base64.RawStdEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
		base64.RawStdEncoding.EncodeToString(body) + ".airlock"
}
