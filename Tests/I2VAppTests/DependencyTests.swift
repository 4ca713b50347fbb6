import Foundation
import Testing

/// The package's targets are its architecture: the core (domain, use cases, the task state machine and its
/// ports) must not depend on an HTTP server, a database driver or a process library, however indirectly
/// through the package's own targets. Read from the manifest as SwiftPM sees it, so a new dependency
/// added anywhere in the core's closure fails here.
@Suite struct DependencyTests {
    static let forbiddenInCore: Set<String> = ["Hummingbird", "HummingbirdCore", "GRDB", "PostgresNIO", "Subprocess"]

    struct Manifest: Decodable {
        struct Target: Decodable {
            var name: String
            var dependencies: [Dependency]
        }

        /// `{"byName": ["X", null]}`, `{"target": ["X", null]}` or `{"product": ["X", "package", …]}`.
        struct Dependency: Decodable {
            var name: String
            var isProduct: Bool

            init(from decoder: any Decoder) throws {
                let container = try decoder.container(keyedBy: AnyKey.self)
                guard let key = container.allKeys.first else {
                    throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "empty dependency"))
                }
                var values = try container.nestedUnkeyedContainer(forKey: key)
                name = try values.decode(String.self)
                isProduct = key.stringValue == "product"
            }
        }

        struct AnyKey: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        var targets: [Target]
    }

    static func manifest() async throws -> Manifest {
        let swift = try #require(
            (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
                .map { "\($0)/swift" }
                .first { FileManager.default.isExecutableFile(atPath: $0) },
            "swift is not on PATH"
        )
        // A scratch path of its own: `swift test` holds the lock of the package's .build while it runs.
        let scratch = FileManager.default.temporaryDirectory.appending(path: "i2v-dump-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let (output, status) = try await runTool(
            swift, ["package", "--package-path", repositoryRoot.path, "--scratch-path", scratch.path, "dump-package"]
        )
        try #require(status == 0, "swift package dump-package exited \(status)")
        return try JSONDecoder().decode(Manifest.self, from: output)
    }

    /// Every target and product the target reaches through the package's own targets.
    static func closure(of name: String, in manifest: Manifest) -> (targets: Set<String>, products: Set<String>) {
        let byName = Dictionary(uniqueKeysWithValues: manifest.targets.map { ($0.name, $0) })
        var targets: Set<String> = []
        var products: Set<String> = []
        var pending = [name]
        while let next = pending.popLast() {
            guard targets.insert(next).inserted, let target = byName[next] else { continue }
            for dependency in target.dependencies {
                if dependency.isProduct || byName[dependency.name] == nil {
                    products.insert(dependency.name)
                } else {
                    pending.append(dependency.name)
                }
            }
        }
        return (targets, products)
    }

    @Test func theCoreImportsNoServerDriverOrProcessLibrary() async throws {
        let manifest = try await Self.manifest()
        let core = Self.closure(of: "I2VCore", in: manifest)
        #expect(core.targets.contains("I2VCore"))
        #expect(core.products.isDisjoint(with: Self.forbiddenInCore), "I2VCore reaches \(core.products.intersection(Self.forbiddenInCore))")
        // The core depends on no adapter of its own package either.
        let adapters: Set<String> = ["I2VApp", "I2VHTTP", "I2VGPUNode", "I2VStoreSQLite", "I2VStorePostgres", "I2VWebhooks"]
        #expect(core.targets.isDisjoint(with: adapters), "I2VCore reaches \(core.targets.intersection(adapters))")
    }

    @Test func adaptersDependOnTheCoreNotOnEachOther() async throws {
        let manifest = try await Self.manifest()
        // Work flows store → dispatcher → workers and requests API → use cases → store: no adapter reaches
        // a store, and the stores reach no other adapter.
        for store in ["I2VStoreSQLite", "I2VStorePostgres"] {
            let reached = Self.closure(of: store, in: manifest).targets
            #expect(reached.isSubset(of: [store, "I2VCore", "ImageIntake", "CVips"]), "\(store) reaches \(reached)")
        }
        for adapter in ["I2VHTTP", "I2VGPUNode", "I2VWebhooks"] {
            let reached = Self.closure(of: adapter, in: manifest)
            #expect(reached.targets.contains("I2VCore"))
            #expect(!reached.products.contains("GRDB") && !reached.products.contains("PostgresNIO"), "\(adapter) reaches a database driver")
        }
        #expect(!Self.closure(of: "I2VGPUNode", in: manifest).products.contains("Hummingbird"))
    }
}
