package sqlstore

type mediaStore struct{ db *DB }
