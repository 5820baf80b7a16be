package sqlstore

type accountStore struct{ db *DB }
