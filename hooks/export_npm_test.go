package hooks

// StaleFallbackForTest exposes staleFallback to the external tests.
var StaleFallbackForTest = staleFallback

// IncompleteInstallForTest exposes incompleteInstall to the external tests.
var IncompleteInstallForTest = incompleteInstall
