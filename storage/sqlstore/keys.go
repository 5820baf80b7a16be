package sqlstore

type keyStore struct{ db *DB }
