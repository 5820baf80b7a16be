package sqlstore

type roomStore struct{ db *DB }
