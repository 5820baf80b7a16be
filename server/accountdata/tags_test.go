package accountdata

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

func TestTags(t *testing.T) {
	const room = "!tags:a.test"
	t.Run("tags are set, listed and deleted as m.tag room account data", func(t *testing.T) {
		s, _, w := newTestService(t)
		ctx := t.Context()
		if tags, err := s.Tags(ctx, alice, alice, room); err != nil || len(tags) != 0 {
			t.Fatalf("no tags yet: %v, %v", tags, err)
		}
		if err := s.SetTag(ctx, alice, alice, room, "m.favourite", json.RawMessage(`{"order":0.25}`)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetTag(ctx, alice, alice, room, "u.work ✓", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
		w.take()
		tags, err := s.Tags(ctx, alice, alice, room)
		if err != nil || len(tags) != 2 || string(tags["m.favourite"]) != `{"order":0.25}` {
			t.Fatalf("tags %s, %v", tags, err)
		}
		raw, err := s.Get(ctx, alice, alice, room, "m.tag")
		if err != nil || !gjson.GetBytes(raw, "tags.u\\.work ✓").Exists() {
			t.Fatalf("m.tag %s, %v", raw, err)
		}
		if err := s.DeleteTag(ctx, alice, alice, room, "m.favourite"); err != nil {
			t.Fatal(err)
		}
		if tags, _ := s.Tags(ctx, alice, alice, room); len(tags) != 1 {
			t.Fatalf("after delete %s", tags)
		}
		before, _ := s.AccountDataPosition(ctx)
		if err := s.DeleteTag(ctx, alice, alice, room, "m.favourite"); err != nil {
			t.Fatalf("deleting an absent tag: %v", err)
		}
		if after, _ := s.AccountDataPosition(ctx); after != before {
			t.Fatal("deleting an absent tag wrote")
		}
	})
	t.Run("bad tags are refused", func(t *testing.T) {
		s, _, _ := newTestService(t)
		ctx := t.Context()
		wantErr(t, s.SetTag(ctx, bob, alice, room, "x", json.RawMessage(`{}`)), 403, "M_FORBIDDEN")
		wantErr(t, s.SetTag(ctx, alice, alice, room, strings.Repeat("x", 256), json.RawMessage(`{}`)), 400, "M_INVALID_PARAM")
		wantErr(t, s.SetTag(ctx, alice, alice, room, "x", json.RawMessage(`{"order":"first"}`)), 400, "M_BAD_JSON")
		wantErr(t, s.SetTag(ctx, alice, alice, "nope", "x", json.RawMessage(`{}`)), 400, "M_INVALID_PARAM")
		_, err := s.Tags(ctx, bob, alice, room)
		wantErr(t, err, 403, "M_FORBIDDEN")
	})
	t.Run("m.tag written through the account-data API with odd content reads as no tags", func(t *testing.T) {
		s, _, _ := newTestService(t)
		ctx := t.Context()
		if err := s.Put(ctx, alice, alice, room, "m.tag", json.RawMessage(`{"tags":[1]}`)); err != nil {
			t.Fatal(err)
		}
		if tags, err := s.Tags(ctx, alice, alice, room); err != nil || len(tags) != 0 {
			t.Fatalf("tags %s, %v", tags, err)
		}
		if err := s.SetTag(ctx, alice, alice, room, "u.a", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	})
}
