package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// client is a minimal Matrix client-server API caller: the generator speaks
// only the standard API so it can be pointed at any homeserver.
type client struct {
	base   string
	http   *http.Client
	userID string
	token  string
}

type apiError struct {
	Status int
	Body   string
}

func (e *apiError) Error() string { return fmt.Sprintf("HTTP %d: %.200s", e.Status, e.Body) }

func (c *client) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &apiError{Status: resp.StatusCode, Body: string(raw)}
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// register makes a user with the dummy flow (open registration), falling
// back to the two-step UIA dance servers like Synapse use.
func register(ctx context.Context, hc *http.Client, base string) (*client, error) {
	c := &client{base: base, http: hc}
	password := randomHex(12)
	var res struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
	}
	body := map[string]any{"password": password, "username": "lg" + randomHex(8), "auth": map[string]any{"type": "m.login.dummy"}}
	err := c.do(ctx, "POST", "/_matrix/client/v3/register", body, &res)
	if e, ok := err.(*apiError); ok && e.Status == http.StatusUnauthorized {
		var uia struct {
			Session string `json:"session"`
		}
		_ = json.Unmarshal([]byte(e.Body), &uia)
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": uia.Session}
		err = c.do(ctx, "POST", "/_matrix/client/v3/register", body, &res)
	}
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	c.userID, c.token = res.UserID, res.AccessToken
	return c, nil
}

func (c *client) createRoom(ctx context.Context, preset string) (string, error) {
	var res struct {
		RoomID string `json:"room_id"`
	}
	err := c.do(ctx, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": preset}, &res)
	return res.RoomID, err
}

func (c *client) join(ctx context.Context, roomID string) error {
	return c.do(ctx, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{}, nil)
}

// send sends a text message carrying the send time, so a reader can measure
// send-to-seen latency from the event alone. The time is in microseconds:
// canonical JSON (which servers sign events in) only allows integers within
// ±(2^53-1), and Unix nanoseconds are beyond that.
func (c *client) send(ctx context.Context, roomID string, sentAt time.Time) error {
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + randomHex(16)
	return c.do(ctx, "PUT", path, map[string]any{"msgtype": "m.text", "body": "load", "lg_sent_us": sentAt.UnixMicro()}, nil)
}

type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events []struct {
					Type    string `json:"type"`
					Content struct {
						SentUS int64 `json:"lg_sent_us"`
					} `json:"content"`
				} `json:"events"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// sync does one /sync; raw also returns the body's size.
func (c *client) sync(ctx context.Context, since string, timeout time.Duration, filter string) (*syncResponse, int, error) {
	q := url.Values{"timeout": {fmt.Sprint(timeout.Milliseconds())}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/_matrix/client/v3/sync?"+q.Encode(), nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, len(raw), &apiError{Status: resp.StatusCode, Body: string(raw)}
	}
	var out syncResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, len(raw), err
	}
	return &out, len(raw), nil
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
