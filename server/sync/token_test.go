package sync

import (
	"errors"
	"net/http"
	"testing"

	"github.com/trustcase/node/server/mxerr"
)

func TestToken(t *testing.T) {
	tok := Token{Timeline: 12, AccountData: 3, Ephemeral: 0, ToDevice: 99, DeviceLists: 7}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "garbage", "s1_2_3_4", "s1_2_3_4_5_6", "s1_2_x_4_5", "s-1_2_3_4_5",
		"t5", "s1_2_3_4_99999999999999999999", "s+1_2_3_4_5", "s1__3_4_5", "S1_2_3_4_5"} {
		_, err := ParseToken(bad)
		var mx *mxerr.Error
		if !errors.As(err, &mx) || mx.Status != http.StatusBadRequest || mx.Code != "M_INVALID_PARAM" {
			t.Errorf("ParseToken(%q) = %v, want 400 M_INVALID_PARAM", bad, err)
		}
	}
}

func TestPageToken(t *testing.T) {
	if n, err := parsePageToken("from", pageToken(41)); err != nil || n != 41 {
		t.Fatalf("t41 = %d, %v", n, err)
	}
	if n, err := parsePageToken("from", "s8_1_2_3_4"); err != nil || n != 8 {
		t.Fatalf("a sync token pages from its timeline position: %d, %v", n, err)
	}
	// Backfilled history sits at negative positions (storage.RoomHistoryStore).
	if n, err := parsePageToken("from", pageToken(-7)); err != nil || n != -7 {
		t.Fatalf("t-7 = %d, %v", n, err)
	}
	for _, bad := range []string{"x", "t", "t-", "t--1", "t-+1", "tz"} {
		if _, err := parsePageToken("from", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseFilter(t *testing.T) {
	good := `{"room":{"timeline":{"limit":5,"types":["m.room.*"]},"state":{"lazy_load_members":true},"include_leave":true},"account_data":{"not_types":["x"]}}`
	f, err := ParseFilter([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if f.Room.Timeline.limit(10, 100) != 5 || !f.Room.State.LazyLoadMembers || !f.Room.IncludeLeave {
		t.Fatalf("parsed %+v", f.Room)
	}
	if !f.Room.Timeline.matches("m.room.message", "@a:x") || f.Room.Timeline.matches("m.reaction", "@a:x") {
		t.Error("type wildcard not applied")
	}
	for _, bad := range []string{`[]`, `{`, `{"room":{"timeline":{"limit":-1}}}`, `{"room":"x"}`, `{"event_format":"xml"}`} {
		if _, err := ParseFilter([]byte(bad)); err == nil {
			t.Errorf("ParseFilter(%s) accepted", bad)
		}
	}
}
