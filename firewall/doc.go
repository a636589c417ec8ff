// Package firewall takes the application's TCP ports out of service and
// reports who is still using them.
//
// Blocking: Block refuses new inbound TCP connections (SYN only, so
// established connections keep flowing and can drain) to a set of ports, for
// IPv4 and IPv6, with iptables through github.com/coreos/go-iptables. It keeps
// everything in a dedicated chain, PATCHAGENT-BLOCK in table filter, holding
// one rule per port:
//
//	-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset
//
// (or -j DROP), and one bare jump at the top of INPUT:
//
//	-A INPUT -j PATCHAGENT-BLOCK
//
// Loopback traffic is exempt (! -i lo), which covers every connection a node
// makes to any of its own addresses, so local health probes keep working.
// Block and Unblock are idempotent and crash-safe: Block builds the chain
// content before it adds the jump, and Unblock removes every jump before it
// deletes the chain; both verify the result from iptables -S output. Unblock
// treats missing rules as success.
//
// Counting: the connection-counting side (conns*.go) reports the live TCP
// connections on those ports via netlink sock_diag, for draining.
//
// The package knows nothing of pm2 or of the application: it is given ports
// and an action, and the caller decides when to block, drain and unblock.
package firewall
