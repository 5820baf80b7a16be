package sqlstore

type accountDataStore struct{ db *DB }
