/// Identifiers clients see: 128 bits from the system CSPRNG, as 32 lowercase hex digits.
package enum RandomIdentifier {
    package static func hex128() -> String {
        var generator = SystemRandomNumberGenerator()
        return Hex.encode((0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    package static func isHex128(_ value: some StringProtocol) -> Bool {
        value.utf8.count == 32 && value.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }
}
