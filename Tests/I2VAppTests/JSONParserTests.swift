import Foundation
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The request body parser: exactly RFC 8259, and numbers beyond a double kept as values.
@Suite struct JSONParserTests {
    static let valid: [(text: String, value: JSONValue)] = [
        (#"{"a":1,"b":[true,false,null],"c":"x"}"#, .object(["a": .integer(1), "b": .array([.bool(true), .bool(false), .null]), "c": .string("x")])),
        (" \t\r\n[ ] ", .array([])),
        ("{}", .object([:])),
        ("0", .integer(0)),
        ("-0", .integer(0)),
        ("81.5", .number(81.5)),
        ("48.0", .number(48.0)),
        ("-2.5e-3", .number(-0.0025)),
        ("1E2", .number(100)),
        ("9223372036854775807", .integer(Int.max)),
        ("9223372036854775808", .number(9_223_372_036_854_775_808)),
        ("1e400", .number(.infinity)),
        ("-1e400", .number(-.infinity)),
        ("1e-400", .number(0)),
        (#""\u732b \ud83d\ude00 \n\t\"\\\/""#, .string("猫 😀 \n\t\"\\/")),
        (#""猫""#, .string("猫")),
        (#"{"k":1,"k":2}"#, .object(["k": .integer(2)])),
    ]

    @Test func validDocumentsParse() throws {
        for (text, value) in Self.valid {
            #expect(try JSONValue.parse(Array(text.utf8)) == value, "\(text)")
        }
    }

    static let invalid: [String] = [
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{a:1}", "{'a':1}", "01", "-", "1.", ".5", "1e", "+1", "NaN", "Infinity",
        "tru", "nul", "[1 2]", "{\"a\" 1}", "1 2", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud83d\"", "\"\\ud83d\\u0041\"",
        "\"tab\there\"", "[1]x", "{\"a\":1}}",
    ]

    @Test func invalidDocumentsAreRefused() {
        for text in Self.invalid {
            #expect(throws: JSONSyntaxError.self, "\(text.debugDescription)") { try JSONValue.parse(Array(text.utf8)) }
        }
        // Invalid UTF-8 inside a string, and a stray continuation byte.
        for bytes: [UInt8] in [[0x22, 0xC3, 0x28, 0x22], [0x22, 0x80, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22]] {
            #expect(throws: JSONSyntaxError.self) { try JSONValue.parse(bytes) }
        }
    }

    @Test func nestingIsBoundedNotRecursedWithoutEnd() throws {
        let ok = String(repeating: "[", count: JSONParser.maxDepth) + String(repeating: "]", count: JSONParser.maxDepth)
        #expect(throws: Never.self) { try JSONValue.parse(Array(ok.utf8)) }
        let deep = String(repeating: "[", count: 30_000) + String(repeating: "]", count: 30_000)
        #expect(throws: JSONSyntaxError.self) { try JSONValue.parse(Array(deep.utf8)) }
    }

    /// What Foundation reads, this parser reads the same (Foundation being the reference for ordinary JSON).
    @Test func ordinaryDocumentsMatchFoundation() throws {
        let documents = [
            #"{"image_url":"http://example.com/a.png","prompt":"A dancing cat","num_frames":81,"guidance_scale":3.5,"seed":null}"#,
            #"[1,-2,3.25,"\u00e9",{"nested":{"deeper":[[]]}}]"#,
        ]
        for text in documents {
            let foundation = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
            #expect(try JSONValue.parse(Array(text.utf8)) == foundation)
        }
    }

    /// An overflowed number echoed back in a 422 `input` must still encode.
    @Test func infinityEncodes() throws {
        let data = try JSONEncoder().encode(JSONValue.array([.number(.infinity), .number(-.infinity)]))
        #expect(String(decoding: data, as: UTF8.self) == #"["Infinity","-Infinity"]"#)
    }
}
