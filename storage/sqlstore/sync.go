package sqlstore

type syncStore struct{ db *DB }
