#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address, as resolved or as written in a URL.
public enum IPAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address in host byte order (127.0.0.1 is 0x7f00_0001).
    case v4(UInt32)
    /// The 16 bytes of the address, big-endian (::1 is 1).
    case v6(UInt128)

    /// Parses the two standard textual forms only (inet_pton: dotted quad, RFC 4291 IPv6), exactly as the
    /// HTTP client decides whether a host is an address literal. Legacy IPv4 spellings such as `127.1`,
    /// `0x7f.1` or `2130706433` are not literals here; the system resolver turns them into addresses
    /// (see `HostResolver`), and the result is checked like any other resolved address.
    public init?(literal: String) {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, literal, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
        } else if inet_pton(AF_INET6, literal, &v6) == 1 {
            self.init(in6: v6)
        } else {
            return nil
        }
    }

    init(in6 address: in6_addr) {
        var value: UInt128 = 0
        withUnsafeBytes(of: address) { bytes in
            for byte in bytes {
                value = value << 8 | UInt128(byte)
            }
        }
        self = .v6(value)
    }

    /// The canonical text (inet_ntop): `127.0.0.1`, `::ffff:127.0.0.1`, `fe80::1`.
    public var description: String {
        switch self {
        case .v4(let value):
            return "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
        case .v6(let value):
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { bytes in
                for index in 0..<16 {
                    bytes[index] = UInt8(truncatingIfNeeded: value >> UInt128(8 * (15 - index)))
                }
            }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count)) != nil else {
                return "invalid"
            }
            let utf8 = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
            return String(decoding: utf8, as: UTF8.self)
        }
    }
}

/// Address ranges that an image URL must not reach: everything that is not ordinary global
/// unicast. IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by that IPv4 address.
public enum BlockedRange: String, Sendable, Equatable, CaseIterable {
    case unspecified  // 0.0.0.0/8 "this network", ::
    case loopback  // 127/8, ::1
    case privateNetwork = "private"  // 10/8, 172.16/12, 192.168/16
    case sharedAddressSpace = "cgnat"  // 100.64/10
    case linkLocal = "link-local"  // 169.254/16 (cloud metadata 169.254.169.254), fe80::/10
    case ietfProtocol = "ietf-protocol"  // 192.0.0.0/24, 2001::/23 (incl. Teredo 2001::/32)
    case documentation  // 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20
    case relay6to4 = "6to4-relay"  // 192.88.99.0/24
    case benchmarking  // 198.18/15
    case multicast  // 224/4, ff00::/8
    case reserved  // 240/4 (incl. broadcast 255.255.255.255), IPv6 outside 2000::/3
    case uniqueLocal = "unique-local"  // fc00::/7
    case siteLocal = "site-local"  // fec0::/10 (deprecated)
    case ipv4Compatible = "ipv4-compatible"  // ::a.b.c.d (deprecated)
    case localNAT64 = "local-nat64"  // 64:ff9b:1::/48
    case discard  // 100::/64
}

extension IPAddress {
    /// Why this address is blocked, or nil when it is an ordinary public address.
    public var blockedRange: BlockedRange? {
        switch self {
        case .v4(let value):
            return Self.classifyV4(value)
        case .v6(let value):
            return Self.classifyV6(value)
        }
    }

    public var isBlocked: Bool { blockedRange != nil }

    /// The IPv4 address an IPv6 address stands for, where connecting to it reaches that IPv4 host:
    /// IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::/48).
    public var embeddedIPv4: UInt32? {
        guard case .v6(let value) = self else { return nil }
        let low32 = UInt32(truncatingIfNeeded: value)
        if value >> 32 == 0xffff { return low32 }  // ::ffff:0:0/96
        if value >> 32 == 0x0064_ff9b << 64 { return low32 }  // 64:ff9b::/96
        if value >> 112 == 0x2002 { return UInt32(truncatingIfNeeded: value >> 80) }  // 2002::/16
        return nil
    }

    private static func classifyV4(_ a: UInt32) -> BlockedRange? {
        func within(_ network: UInt32, _ prefix: Int) -> Bool {
            let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefix)
            return a & mask == network
        }
        if within(0x0000_0000, 8) { return .unspecified }  // 0.0.0.0/8
        if within(0x0a00_0000, 8) { return .privateNetwork }  // 10.0.0.0/8
        if within(0x6440_0000, 10) { return .sharedAddressSpace }  // 100.64.0.0/10
        if within(0x7f00_0000, 8) { return .loopback }  // 127.0.0.0/8
        if within(0xa9fe_0000, 16) { return .linkLocal }  // 169.254.0.0/16
        if within(0xac10_0000, 12) { return .privateNetwork }  // 172.16.0.0/12
        if within(0xc000_0000, 24) { return .ietfProtocol }  // 192.0.0.0/24
        if within(0xc000_0200, 24) { return .documentation }  // 192.0.2.0/24
        if within(0xc058_6300, 24) { return .relay6to4 }  // 192.88.99.0/24
        if within(0xc0a8_0000, 16) { return .privateNetwork }  // 192.168.0.0/16
        if within(0xc612_0000, 15) { return .benchmarking }  // 198.18.0.0/15
        if within(0xc633_6400, 24) { return .documentation }  // 198.51.100.0/24
        if within(0xcb00_7100, 24) { return .documentation }  // 203.0.113.0/24
        if within(0xe000_0000, 4) { return .multicast }  // 224.0.0.0/4
        if within(0xf000_0000, 4) { return .reserved }  // 240.0.0.0/4, 255.255.255.255
        return nil
    }

    private static func classifyV6(_ a: UInt128) -> BlockedRange? {
        func within(_ network: UInt128, _ prefix: Int) -> Bool {
            let mask: UInt128 = prefix == 0 ? 0 : ~UInt128(0) << UInt128(128 - prefix)
            return a & mask == network
        }
        if a == 0 { return .unspecified }  // ::
        if a == 1 { return .loopback }  // ::1
        if let v4 = IPAddress.v6(a).embeddedIPv4 {
            // Mapped and NAT64 reach the IPv4 host; 6to4 is routed to it. Judge by that host.
            return classifyV4(v4)
        }
        if within(0, 96) { return .ipv4Compatible }  // ::a.b.c.d (deprecated)
        if within(0x0064_ff9b_0001 << 80, 48) { return .localNAT64 }  // 64:ff9b:1::/48
        if within(0x0100 << 112, 64) { return .discard }  // 100::/64
        if within(0xfc00 << 112, 7) { return .uniqueLocal }  // fc00::/7
        if within(0xfe80 << 112, 10) { return .linkLocal }  // fe80::/10
        if within(0xfec0 << 112, 10) { return .siteLocal }  // fec0::/10
        if within(0xff00 << 112, 8) { return .multicast }  // ff00::/8
        if !within(0x2000 << 112, 3) { return .reserved }  // only 2000::/3 is global unicast
        if within(0x2001_0db8 << 96, 32) { return .documentation }  // 2001:db8::/32
        if within(0x2001 << 112, 23) { return .ietfProtocol }  // 2001::/23, Teredo, ORCHID, ...
        if within(0x3fff << 112, 20) { return .documentation }  // 3fff::/20
        return nil
    }
}

extension BlockedRange {
    /// The ranges `allowPrivateHosts` opens (tests, LANs). Link-local stays blocked even then: it holds the
    /// cloud metadata address, and a LAN deployment on a cloud VM must not hand out instance credentials.
    public var isOpenedByPrivateHostAllowance: Bool {
        switch self {
        case .loopback, .privateNetwork, .sharedAddressSpace, .uniqueLocal: true
        default: false
        }
    }
}
