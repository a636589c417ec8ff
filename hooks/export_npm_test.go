package hooks

// StaleFallbackForTest exposes staleFallback to the external tests.
var StaleFallbackForTest = staleFallback
