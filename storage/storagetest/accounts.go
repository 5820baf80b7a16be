package storagetest

import (
	"errors"
	"slices"
	"testing"

	"github.com/trustcase/node/storage"
)

func testAccounts(t *testing.T, open Opener) {
	alice := storage.Account{UserID: "@alice123:a.test", PasswordHash: "$2a$10$hash", CreatedTS: 1000}
	dev := func(id, token string) storage.Device {
		return storage.Device{UserID: alice.UserID, DeviceID: id, DisplayName: "phone " + id, TokenHash: token, CreatedTS: 2000}
	}

	t.Run("an account is created once, with its first device", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		if _, err := as.Account(ctx, alice.UserID); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown account: err = %v, want ErrNotFound", err)
		}
		d := dev("DEV1", "hash1")
		if err := as.CreateAccount(ctx, alice, "", 1000, &d); err != nil {
			t.Fatalf("create: %v", err)
		}
		got, err := as.Account(ctx, alice.UserID)
		if err != nil || got != alice {
			t.Fatalf("account = %+v, %v; want %+v", got, err, alice)
		}
		other := dev("DEV2", "hash2")
		if err := as.CreateAccount(ctx, storage.Account{UserID: alice.UserID, PasswordHash: "x", CreatedTS: 5}, "", 1000, &other); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("second create with the same ID: err = %v, want ErrConflict", err)
		}
		if _, err := as.DeviceByToken(ctx, "hash2"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the refused create left its device behind: %v", err)
		}
		gotDev, err := as.DeviceByToken(ctx, "hash1")
		if err != nil || gotDev != d {
			t.Fatalf("device by token = %+v, %v; want %+v", gotDev, err, d)
		}
		accs, err := as.Accounts(ctx)
		if err != nil || len(accs) != 1 || accs[0] != alice {
			t.Fatalf("accounts = %+v, %v", accs, err)
		}
	})

	t.Run("a new device replaces the previous one and its token", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		if _, err := as.ReplaceDevice(ctx, dev("DEV1", "hash1")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("device for an unknown account: err = %v, want ErrNotFound", err)
		}
		if err := as.CreateAccount(ctx, alice, "", 1000, nil); err != nil {
			t.Fatal(err)
		}
		if devs, err := as.Devices(ctx, alice.UserID); err != nil || len(devs) != 0 {
			t.Fatalf("devices before login = %+v, %v; want none", devs, err)
		}
		prev, err := as.ReplaceDevice(ctx, dev("DEV1", "hash1"))
		if err != nil || prev != "" {
			t.Fatalf("first device: previous = %q, %v; want none", prev, err)
		}
		prev, err = as.ReplaceDevice(ctx, dev("DEV2", "hash2"))
		if err != nil || prev != "DEV1" {
			t.Fatalf("second device: previous = %q, %v; want DEV1", prev, err)
		}
		if _, err := as.DeviceByToken(ctx, "hash1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the replaced device's token still resolves: %v", err)
		}
		devs, err := as.Devices(ctx, alice.UserID)
		if err != nil || len(devs) != 1 || devs[0].DeviceID != "DEV2" {
			t.Fatalf("devices = %+v, %v; want only DEV2", devs, err)
		}
		// The same ID again (a client re-using its device ID) gets a new token.
		prev, err = as.ReplaceDevice(ctx, dev("DEV2", "hash3"))
		if err != nil || prev != "DEV2" {
			t.Fatalf("same device again: previous = %q, %v", prev, err)
		}
		if _, err := as.DeviceByToken(ctx, "hash2"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the old token of a re-used device ID still resolves: %v", err)
		}
	})

	t.Run("devices are renamed and deleted only by their user", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		d := dev("DEV1", "hash1")
		if err := as.CreateAccount(ctx, alice, "", 1000, &d); err != nil {
			t.Fatal(err)
		}
		if err := as.SetDeviceDisplayName(ctx, "@bob:a.test", "DEV1", "x"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("renaming another user's device: err = %v, want ErrNotFound", err)
		}
		if err := as.SetDeviceDisplayName(ctx, alice.UserID, "DEV1", "Laptop ✓"); err != nil {
			t.Fatal(err)
		}
		if got, _ := as.DeviceByToken(ctx, "hash1"); got.DisplayName != "Laptop ✓" {
			t.Fatalf("display name = %q", got.DisplayName)
		}
		if err := as.DeleteDevice(ctx, "@bob:a.test", "DEV1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deleting another user's device: err = %v, want ErrNotFound", err)
		}
		if err := as.DeleteDevice(ctx, alice.UserID, "DEV1"); err != nil {
			t.Fatal(err)
		}
		if err := as.DeleteDevice(ctx, alice.UserID, "DEV1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deleting twice: err = %v, want ErrNotFound", err)
		}
		if _, err := as.DeviceByToken(ctx, "hash1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a deleted device's token still resolves: %v", err)
		}
	})

	t.Run("deactivation removes the device and profile and blocks new devices", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		d := dev("DEV1", "hash1")
		if err := as.CreateAccount(ctx, alice, "", 1000, &d); err != nil {
			t.Fatal(err)
		}
		if err := as.SetProfileField(ctx, alice.UserID, "displayname", []byte(`"Alice"`), 1<<16); err != nil {
			t.Fatal(err)
		}
		removed, err := as.Deactivate(ctx, alice.UserID)
		if err != nil || removed != "DEV1" {
			t.Fatalf("deactivate = %q, %v; want DEV1", removed, err)
		}
		if acc, _ := as.Account(ctx, alice.UserID); !acc.Deactivated {
			t.Fatal("account not marked deactivated")
		}
		if _, err := as.DeviceByToken(ctx, "hash1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("device survived deactivation: %v", err)
		}
		if f, _ := as.ProfileFields(ctx, alice.UserID); len(f) != 0 {
			t.Fatalf("profile survived deactivation: %v", f)
		}
		if _, err := as.ReplaceDevice(ctx, dev("DEV2", "hash2")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("new device on a deactivated account: err = %v, want ErrNotFound", err)
		}
		if err := as.SetPasswordHash(ctx, alice.UserID, "new"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("password change on a deactivated account: err = %v, want ErrNotFound", err)
		}
		if _, err := as.Deactivate(ctx, "@nobody:a.test"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deactivating an unknown account: err = %v, want ErrNotFound", err)
		}
	})

	t.Run("password hash changes", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		if err := as.CreateAccount(ctx, alice, "", 1000, nil); err != nil {
			t.Fatal(err)
		}
		if err := as.SetPasswordHash(ctx, alice.UserID, "$2a$10$other"); err != nil {
			t.Fatal(err)
		}
		if acc, _ := as.Account(ctx, alice.UserID); acc.PasswordHash != "$2a$10$other" {
			t.Fatalf("hash = %q", acc.PasswordHash)
		}
		if err := as.SetPasswordHash(ctx, "@nobody:a.test", "x"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown account: err = %v, want ErrNotFound", err)
		}
	})

	t.Run("profile fields are set, replaced, bounded and deleted", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		if err := as.CreateAccount(ctx, alice, "", 1000, nil); err != nil {
			t.Fatal(err)
		}
		if err := as.SetProfileField(ctx, alice.UserID, "displayname", []byte(`"A"`), 100); err != nil {
			t.Fatal(err)
		}
		if err := as.SetProfileField(ctx, alice.UserID, "displayname", []byte(`"Alice ✓"`), 100); err != nil {
			t.Fatal(err)
		}
		if err := as.SetProfileField(ctx, alice.UserID, "org.example.x", []byte(`{"a":[1,2]}`), 100); err != nil {
			t.Fatal(err)
		}
		f, err := as.ProfileFields(ctx, alice.UserID)
		if err != nil || string(f["displayname"]) != `"Alice ✓"` || string(f["org.example.x"]) != `{"a":[1,2]}` || len(f) != 2 {
			t.Fatalf("fields = %q, %v", f, err)
		}
		big := make([]byte, 90)
		for i := range big {
			big[i] = 'x'
		}
		big[0], big[89] = '"', '"'
		if err := as.SetProfileField(ctx, alice.UserID, "avatar_url", big, 100); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("over the profile limit: err = %v, want ErrConflict", err)
		}
		if err := as.DeleteProfileField(ctx, alice.UserID, "org.example.x"); err != nil {
			t.Fatal(err)
		}
		if err := as.DeleteProfileField(ctx, alice.UserID, "org.example.x"); err != nil {
			t.Fatalf("deleting an absent field: %v", err)
		}
		if f, _ := as.ProfileFields(ctx, alice.UserID); len(f) != 1 {
			t.Fatalf("fields after delete = %q", f)
		}
	})

	t.Run("registration tokens are consumed with the account that uses them", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		for _, tok := range []storage.RegistrationToken{
			{Hash: "once", UsesAllowed: 1, CreatedTS: 1},
			{Hash: "expiring", ExpiryTS: 5000, CreatedTS: 1},
			{Hash: "forever", CreatedTS: 1},
		} {
			if err := as.CreateRegistrationToken(ctx, tok); err != nil {
				t.Fatal(err)
			}
		}
		if err := as.CreateRegistrationToken(ctx, storage.RegistrationToken{Hash: "once", CreatedTS: 2}); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("duplicate token: err = %v, want ErrConflict", err)
		}
		valid := func(hash string, now int64) bool {
			t.Helper()
			ok, err := as.RegistrationTokenValid(ctx, hash, now)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if !valid("once", 1000) || !valid("expiring", 4999) || valid("expiring", 5000) || !valid("forever", 1<<40) || valid("unknown", 0) {
			t.Fatal("validity before use is wrong")
		}
		acc := func(id string) storage.Account { return storage.Account{UserID: id, PasswordHash: "h", CreatedTS: 1} }
		if err := as.CreateAccount(ctx, acc("@u1:a.test"), "once", 1000, nil); err != nil {
			t.Fatalf("registering with the token: %v", err)
		}
		if valid("once", 1000) {
			t.Fatal("a one-use token is still valid after its use")
		}
		if err := as.CreateAccount(ctx, acc("@u2:a.test"), "once", 1000, nil); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("second use: err = %v, want ErrNotFound", err)
		}
		if _, err := as.Account(ctx, "@u2:a.test"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatal("the refused registration left its account behind")
		}
		if err := as.CreateAccount(ctx, acc("@u3:a.test"), "expiring", 6000, nil); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("expired token: err = %v, want ErrNotFound", err)
		}
		// A failed account insert gives the token's use back.
		if err := as.CreateRegistrationToken(ctx, storage.RegistrationToken{Hash: "single", UsesAllowed: 1, CreatedTS: 1}); err != nil {
			t.Fatal(err)
		}
		if err := as.CreateAccount(ctx, acc("@u1:a.test"), "single", 1000, nil); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("taken ID: err = %v, want ErrConflict", err)
		}
		if !valid("single", 1000) {
			t.Fatal("a refused registration used up the token")
		}
	})

	t.Run("UIA sessions persist, update and expire", func(t *testing.T) {
		as := open(t).Accounts()
		ctx := t.Context()
		s := storage.UIASession{ID: "sess1", Binding: "b", CreatedTS: 1000, ExpiresTS: 2000}
		if err := as.CreateUIASession(ctx, s, 1000); err != nil {
			t.Fatal(err)
		}
		got, err := as.UIASession(ctx, "sess1", 1500)
		if err != nil || got.Binding != "b" || len(got.Completed) != 0 {
			t.Fatalf("session = %+v, %v", got, err)
		}
		got.Completed = []string{"m.login.registration_token"}
		got.RegTokenHash = "tok"
		if err := as.UpdateUIASession(ctx, got); err != nil {
			t.Fatal(err)
		}
		got, err = as.UIASession(ctx, "sess1", 1500)
		if err != nil || !slices.Equal(got.Completed, []string{"m.login.registration_token"}) || got.RegTokenHash != "tok" {
			t.Fatalf("updated session = %+v, %v", got, err)
		}
		if _, err := as.UIASession(ctx, "sess1", 2000); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("expired session: err = %v, want ErrNotFound", err)
		}
		// Creating a session prunes the expired ones.
		if err := as.CreateUIASession(ctx, storage.UIASession{ID: "sess2", Binding: "b", CreatedTS: 3000, ExpiresTS: 4000}, 3000); err != nil {
			t.Fatal(err)
		}
		if err := as.UpdateUIASession(ctx, got); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("sess1 was not pruned: err = %v", err)
		}
		if err := as.DeleteUIASession(ctx, "sess2"); err != nil {
			t.Fatal(err)
		}
		if _, err := as.UIASession(ctx, "sess2", 3000); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deleted session: err = %v", err)
		}
	})
}
