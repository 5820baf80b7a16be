package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/keys"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

const adminUsage = `usage: trustcase admin <subcommand> [-config FILE] [flags]

subcommands:
  create-user                          create an account; prints its ID and a one-time initial password
  create-token [-uses N] [-expires D]  create a registration token (N uses, 0 = unlimited; D e.g. 24h, 0 = never)
  list-users                           list every account
  deactivate @user:server              deactivate an account, log out its device and leave its rooms`

// Admin runs "trustcase admin <subcommand>". Exit codes: 0 ok, 1 failure,
// 2 usage.
func Admin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprintln(stderr, adminUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("trustcase admin "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "trustcase.yaml", "configuration file")
	var uses *int64
	var expires *time.Duration
	switch sub {
	case "create-token":
		uses = fs.Int64("uses", 0, "how many registrations the token allows (0 = unlimited)")
		expires = fs.Duration("expires", 0, "how long the token stays valid (0 = never)")
	case "create-user", "list-users", "deactivate":
	default:
		fmt.Fprintf(stderr, "unknown subcommand %q\n%s\n", sub, adminUsage)
		return 2
	}
	// Flags may come before or after the positional argument.
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	want := 0
	if sub == "deactivate" {
		want = 1
	}
	if len(positional) != want {
		fmt.Fprintf(stderr, "%s: wrong number of arguments\n%s\n", sub, adminUsage)
		return 2
	}
	if uses != nil && (*uses < 0 || *expires < 0) {
		fmt.Fprintln(stderr, "create-token: -uses and -expires must not be negative")
		return 2
	}

	cfg, ok := loadForAdmin(*cfgPath, stderr)
	if !ok {
		return 1
	}
	store, err := OpenStore(ctx, cfg.Database.URL)
	if err != nil {
		fmt.Fprintln(stderr, "opening the database:", err)
		return 1
	}
	defer store.Close()
	log := logrus.New()
	// The command prints its own results; only failures the services log
	// after a commit (a room the deactivated user could not leave) reach
	// stderr.
	log.SetOutput(stderr)
	log.SetLevel(logrus.ErrorLevel)
	// A deactivated device's keys and queued to-device messages go too. No
	// waker: this process cannot reach the running node's long-polls; the
	// device-list change is committed and shows on the peers' next sync.
	devKeys := keys.New(store.Keys(), keys.Config{ServerName: cfg.ServerName}, nil, log)
	// A deactivated user leaves their rooms (see adminRooms).
	var roomSvc *rooms.Service
	svc := accounts.New(store.Accounts(), accounts.Config{ServerName: cfg.ServerName, RegistrationMode: cfg.Registration.Mode}, log, devKeys,
		accounts.WithRooms(lateRooms{func() *rooms.Service { return roomSvc }, store.Sync()}))
	if sub == "deactivate" {
		if roomSvc, err = adminRooms(cfg, store, svc, log); err != nil {
			fmt.Fprintln(stderr, "deactivate:", err)
			return 1
		}
	}

	switch sub {
	case "create-user":
		userID, password, err := svc.CreateUser(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "create-user:", err)
			return 1
		}
		fmt.Fprintf(stdout, "user_id: %s\ninitial_password: %s\n", userID, password)
	case "create-token":
		tok, err := svc.CreateRegistrationToken(ctx, *uses, *expires)
		if err != nil {
			fmt.Fprintln(stderr, "create-token:", err)
			return 1
		}
		fmt.Fprintln(stdout, tok)
	case "list-users":
		users, err := svc.Users(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "list-users:", err)
			return 1
		}
		for _, u := range users {
			status := "active"
			if u.Deactivated {
				status = "deactivated"
			}
			fmt.Fprintf(stdout, "%s\t%s\t%s\n", u.UserID, status, time.UnixMilli(u.CreatedTS).UTC().Format(time.RFC3339))
		}
	case "deactivate":
		err := svc.DeactivateUser(ctx, positional[0])
		if errors.Is(err, storage.ErrNotFound) {
			fmt.Fprintf(stderr, "deactivate: no local user %s\n", positional[0])
			return 1
		}
		if err != nil {
			fmt.Fprintln(stderr, "deactivate:", err)
			return 1
		}
		fmt.Fprintf(stdout, "deactivated %s\n", positional[0])
	}
	return 0
}
