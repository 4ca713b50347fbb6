import Foundation
import I2VCore
import I2VGPUNode
import NIOCore

/// A parsed JSON document, kept exact enough to tell 81 from 81.5, "81" and true, which request
/// validation must tell apart.
///
/// Numbers outside what an `Int` or a finite `Double` holds (`1e400`, a 30-digit integer) are valid JSON
/// and parse to `.number` (±infinity, or a large whole double), so validation can name the field they
/// were sent in rather than refusing the whole body.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        // JSON has no infinity; echoing an overflowed input back must not fail the whole answer.
        case .number(let value) where !value.isFinite: try container.encode(value > 0 ? "Infinity" : "-Infinity")
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses one JSON text (RFC 8259): strict syntax, valid UTF-8, at most `JSONParser.maxDepth` levels.
    package static func parse(_ bytes: some Collection<UInt8>) throws(JSONSyntaxError) -> JSONValue {
        var parser = JSONParser(Array(bytes))
        return try parser.document()
    }

    /// A request body as JSON, or the FastAPI-style 422 for a body that is not JSON.
    package static func parseBody(_ buffer: ByteBuffer) throws(RequestValidationError) -> JSONValue {
        do {
            return try parse(buffer.readableBytesView)
        } catch {
            throw RequestValidationError(issues: [ValidationIssue("json_invalid", field: nil, "JSON decode error", input: nil)])
        }
    }
}

package struct JSONSyntaxError: Error, Equatable {
    /// Byte offset where the text stopped being JSON.
    package var offset: Int

    package init(offset: Int) {
        self.offset = offset
    }
}

/// Foundation's decoders refuse a whole document over one number they cannot represent, which would turn
/// `{"num_frames": 1e400}` into "not JSON" instead of an answer about `num_frames`; this parser keeps such
/// numbers. It is deliberately small: request bodies are capped at a few kilobytes.
package struct JSONParser {
    /// Deeper nesting is refused rather than recursed into (a hostile body must not exhaust the stack).
    package static let maxDepth = 512

    private let bytes: [UInt8]
    private var index = 0
    private var depth = 0

    package init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    package mutating func document() throws(JSONSyntaxError) -> JSONValue {
        let value = try self.value()
        skipWhitespace()
        guard index == bytes.count else { throw failure() }
        return value
    }

    private func failure() -> JSONSyntaxError { JSONSyntaxError(offset: index) }

    private mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    private mutating func value() throws(JSONSyntaxError) -> JSONValue {
        skipWhitespace()
        guard index < bytes.count else { throw failure() }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        default: return try number()
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONSyntaxError) {
        let count = word.utf8CodeUnitCount
        guard bytes.count - index >= count else { throw failure() }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { throw failure() }
        index += count
    }

    private mutating func enter() throws(JSONSyntaxError) {
        depth += 1
        guard depth <= Self.maxDepth else { throw failure() }
        index += 1
    }

    private mutating func object() throws(JSONSyntaxError) -> JSONValue {
        try enter()
        var fields: [String: JSONValue] = [:]
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            depth -= 1
            return .object(fields)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw failure() }
            let key = try string()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw failure() }
            index += 1
            // A repeated key keeps its last value, as Python's json module does.
            fields[key] = try value()
            skipWhitespace()
            guard index < bytes.count else { throw failure() }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            guard bytes[index] == UInt8(ascii: "}") else { throw failure() }
            index += 1
            depth -= 1
            return .object(fields)
        }
    }

    private mutating func array() throws(JSONSyntaxError) -> JSONValue {
        try enter()
        var elements: [JSONValue] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            depth -= 1
            return .array(elements)
        }
        while true {
            elements.append(try value())
            skipWhitespace()
            guard index < bytes.count else { throw failure() }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            guard bytes[index] == UInt8(ascii: "]") else { throw failure() }
            index += 1
            depth -= 1
            return .array(elements)
        }
    }

    private mutating func string() throws(JSONSyntaxError) -> String {
        index += 1  // the opening quote
        var scalars = String.UnicodeScalarView()
        var runStart = index
        // Unescaped runs are copied as validated UTF-8; escapes are decoded one by one.
        func flush(_ parser: JSONParser, upTo end: Int) throws(JSONSyntaxError) {
            guard end > runStart else { return }
            guard let run = String(validating: parser.bytes[runStart..<end], as: UTF8.self) else {
                throw JSONSyntaxError(offset: runStart)
            }
            scalars.append(contentsOf: run.unicodeScalars)
        }
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                try flush(self, upTo: index)
                index += 1
                return String(scalars)
            case UInt8(ascii: "\\"):
                try flush(self, upTo: index)
                index += 1
                scalars.append(try escape())
                runStart = index
            case 0x00..<0x20:
                throw failure()
            default:
                index += 1
            }
        }
        throw failure()
    }

    private mutating func escape() throws(JSONSyntaxError) -> Unicode.Scalar {
        guard index < bytes.count else { throw failure() }
        let byte = bytes[index]
        index += 1
        switch byte {
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "/"): return "/"
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "f"): return "\u{0C}"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "u"):
            let unit = try hex4()
            if (0xD800..<0xDC00).contains(unit) {
                // A high surrogate must be followed by an escaped low one.
                guard bytes.count - index >= 6, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                    throw failure()
                }
                index += 2
                let low = try hex4()
                guard (0xDC00..<0xE000).contains(low),
                    let scalar = Unicode.Scalar(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                else { throw failure() }
                return scalar
            }
            guard let scalar = Unicode.Scalar(unit) else { throw failure() }
            return scalar
        default:
            throw failure()
        }
    }

    private mutating func hex4() throws(JSONSyntaxError) -> UInt32 {
        guard bytes.count - index >= 4 else { throw failure() }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw failure()
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    private mutating func number() throws(JSONSyntaxError) -> JSONValue {
        let start = index
        func digits(_ parser: inout JSONParser) -> Int {
            let from = parser.index
            while parser.index < parser.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(parser.bytes[parser.index]) {
                parser.index += 1
            }
            return parser.index - from
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerStart = index
        let integerDigits = digits(&self)
        guard integerDigits > 0 else { throw failure() }
        // No leading zeros ("01" is not JSON).
        if integerDigits > 1, bytes[integerStart] == UInt8(ascii: "0") { throw JSONSyntaxError(offset: integerStart) }
        var isInteger = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard digits(&self) > 0 else { throw failure() }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits(&self) > 0 else { throw failure() }
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        if isInteger, let integer = Int(text) {
            return .integer(integer)
        }
        // Overflow gives ±infinity and underflow ±0: what Python's json module reads too.
        guard let number = Double(text) else { throw JSONSyntaxError(offset: start) }
        return .number(number)
    }
}
