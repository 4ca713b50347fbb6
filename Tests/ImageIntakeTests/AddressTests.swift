import Testing

@testable import ImageIntake

@Suite("Address classifier")
struct AddressClassifierTests {
    func range(_ literal: String) throws -> BlockedRange? {
        let address = try #require(IPAddress(literal: literal), "\(literal) must parse")
        return address.blockedRange
    }

    @Test(
        "blocked IPv4 ranges",
        arguments: [
            ("0.0.0.0", BlockedRange.unspecified), ("0.255.255.255", .unspecified),
            ("10.0.0.1", .privateNetwork), ("10.255.255.255", .privateNetwork),
            ("100.64.0.1", .sharedAddressSpace), ("100.127.255.255", .sharedAddressSpace),
            ("127.0.0.1", .loopback), ("127.255.255.254", .loopback),
            ("169.254.169.254", .linkLocal), ("169.254.0.1", .linkLocal),
            ("172.16.0.1", .privateNetwork), ("172.31.255.255", .privateNetwork),
            ("192.0.0.8", .ietfProtocol), ("192.0.2.1", .documentation), ("192.88.99.1", .relay6to4),
            ("192.168.0.1", .privateNetwork), ("192.168.255.255", .privateNetwork),
            ("198.18.0.1", .benchmarking), ("198.19.255.255", .benchmarking),
            ("198.51.100.7", .documentation), ("203.0.113.9", .documentation),
            ("224.0.0.1", .multicast), ("239.255.255.250", .multicast),
            ("240.0.0.1", .reserved), ("255.255.255.255", .reserved),
        ])
    func blockedV4(literal: String, expected: BlockedRange) throws {
        #expect(try range(literal) == expected)
    }

    @Test(
        "public IPv4 addresses, including the neighbours of blocked ranges",
        arguments: [
            "1.1.1.1", "8.8.8.8", "93.184.216.34", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0",
            "126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0", "172.15.255.255", "172.32.0.0",
            "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255",
        ])
    func publicV4(literal: String) throws {
        #expect(try range(literal) == nil)
    }

    @Test(
        "blocked IPv6 ranges",
        arguments: [
            ("::", BlockedRange.unspecified), ("::1", .loopback),
            ("fc00::1", .uniqueLocal), ("fd12:3456::1", .uniqueLocal),
            ("fe80::1", .linkLocal), ("febf::1", .linkLocal), ("fec0::1", .siteLocal),
            ("ff02::1", .multicast), ("ff05::2", .multicast),
            ("2001:db8::1", .documentation), ("3fff::1", .documentation),
            ("2001::1", .ietfProtocol), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", .ietfProtocol),  // Teredo
            ("100::1", .discard), ("64:ff9b:1::1", .localNAT64),
            ("::127.0.0.1", .ipv4Compatible), ("::8.8.8.8", .ipv4Compatible), ("::ffff:0:7f00:1", .reserved),
            ("4000::1", .reserved), ("1::1", .reserved), ("::2:0:0", .reserved), ("c000::1", .reserved),
        ])
    func blockedV6(literal: String, expected: BlockedRange) throws {
        #expect(try range(literal) == expected)
    }

    @Test(
        "IPv6 forms of blocked IPv4 addresses are judged by the IPv4 address",
        arguments: [
            ("::ffff:127.0.0.1", BlockedRange.loopback), ("::ffff:7f00:1", .loopback),
            ("::ffff:169.254.169.254", .linkLocal), ("::ffff:10.1.2.3", .privateNetwork),
            ("::ffff:0.0.0.0", .unspecified),
            ("64:ff9b::127.0.0.1", .loopback), ("64:ff9b::a9fe:a9fe", .linkLocal), ("64:ff9b::192.168.1.1", .privateNetwork),
            ("2002:7f00:1::", .loopback), ("2002:a9fe:a9fe::1", .linkLocal), ("2002:c0a8:101::", .privateNetwork),
        ])
    func embeddedV4(literal: String, expected: BlockedRange) throws {
        #expect(try range(literal) == expected)
    }

    @Test(
        "public IPv6 addresses, and IPv6 forms of public IPv4 ones",
        arguments: [
            "2606:4700:4700::1111", "2a00:1450:4001:81c::200e", "2001:4860:4860::8888",
            "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
        ])
    func publicV6(literal: String) throws {
        #expect(try range(literal) == nil)
    }

    @Test("literals are parsed as the HTTP client parses them: legacy IPv4 spellings are not literals")
    func literalParsing() {
        #expect(IPAddress(literal: "127.0.0.1") == .v4(0x7f00_0001))
        #expect(IPAddress(literal: "::1") == .v6(1))
        for odd in ["127.1", "0x7f.1", "017700000001", "2130706433", "0x7f000001", "127.0.0.1.", "[::1]", "localhost"] {
            #expect(IPAddress(literal: odd) == nil, "\(odd)")
        }
        #expect(IPAddress.v4(0xa9fe_a9fe).description == "169.254.169.254")
        #expect(IPAddress(literal: "::ffff:127.0.0.1")?.description == "::ffff:127.0.0.1")
        #expect(IPAddress(literal: "fe80::0001")?.description == "fe80::1")
    }

    @Test(
        "the system resolver turns odd spellings into the addresses they mean",
        arguments: [
            "127.1", "0x7f.1", "017700000001", "2130706433", "0x7f000001", "127.0.0.1", "0177.0.0.1",
        ])
    func oddSpellingsResolve(host: String) throws {
        let addresses = try HostResolver.getaddrinfoAddresses(host).get()
        #expect(addresses == [.v4(0x7f00_0001)])
        #expect(addresses.allSatisfy { $0.blockedRange == .loopback })
    }

    @Test("localhost names are recognised")
    func localNames() {
        for name in ["localhost", "LOCALHOST", "localhost.", "foo.localhost", "a.b.LocalHost."] {
            #expect(ImageFetcher.isLocalName(name), "\(name)")
        }
        for name in ["localhost.example.com", "mylocalhost", "example.com"] {
            #expect(!ImageFetcher.isLocalName(name), "\(name)")
        }
    }
}

@Suite("URL checks")
struct URLCheckTests {
    @Test(
        "credentials in the URL are refused",
        arguments: [
            "http://user:pass@example.com/a.png", "http://user@example.com/a.png", "https://:secret@example.com/",
            "http://@example.com/", "http://example.com:80@127.0.0.1/",
        ])
    func credentials(url: String) {
        #expect(throws: ImageIntakeError(.credentialsInURL, "image URL must not contain a user name or password")) {
            try ImageFetcher.parse(url)
        }
    }

    @Test("hosts as the client sees them")
    func hosts() throws {
        let v6 = try ImageFetcher.parse("http://[::ffff:127.0.0.1]:8080/x.png")
        #expect(v6.host == "::ffff:127.0.0.1")
        #expect(v6.literal == IPAddress(literal: "::ffff:127.0.0.1"))
        #expect(v6.port == 8080)
        let decimal = try ImageFetcher.parse("http://2130706433/")
        #expect(decimal.host == "2130706433" && decimal.literal == nil && decimal.port == 80)
        let hex = try ImageFetcher.parse("https://0x7f.1/a")
        #expect(hex.host == "0x7f.1" && hex.port == 443)
        let name = try ImageFetcher.parse("https://Images.Example.COM/a.jpg?x=1#f")
        #expect(name.literal == nil)
    }

    @Test("percent escapes in the host never hide an address")
    func percentEncodedHost() {
        do {
            let target = try ImageFetcher.parse("http://127.0.0.%31/a.png")
            // Decoded by the URL parser (as the HTTP client would see it): then it is the literal.
            #expect(target.literal == .v4(0x7f00_0001))
        } catch {
            #expect(error.cause == .invalidURL)
        }
    }

    @Test("unusable URLs", arguments: ["ftp://example.com/a.png", "file:///etc/passwd", "http:///a.png", "not a url"])
    func invalid(url: String) {
        #expect(performing: { try ImageFetcher.parse(url) }, throws: { ($0 as? ImageIntakeError)?.cause == .invalidURL })
    }

    @Test("redirect targets resolve against the current URL")
    func redirects() throws {
        let relative = try ImageFetcher.resolveRedirect("/b.png", from: "http://example.com:8080/a/a.png")
        #expect(relative.url == "http://example.com:8080/b.png")
        let absolute = try ImageFetcher.resolveRedirect("https://other.example/c.png", from: "http://example.com/a.png")
        #expect(absolute.host == "other.example" && absolute.scheme == "https")
        #expect(
            performing: { try ImageFetcher.resolveRedirect("ftp://example.com/x", from: "http://example.com/") },
            throws: {
                ($0 as? ImageIntakeError)?.cause == .invalidURL
            })
    }
}
