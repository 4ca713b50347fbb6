// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

// Tests import what they use through @testable modules; member-import checks only add noise there.
let testSwiftSettings: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "i2v-server",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "i2v-server", targets: ["I2VServer"])
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/vapor/multipart-kit.git", from: "4.7.1"),
    ],
    targets: [
        .executableTarget(
            name: "I2VServer",
            dependencies: [
                "I2VApp",
                "I2VCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        // The core: domain types, use cases, the task state machine and the ports they need. It imports no
        // HTTP server, database driver or process library (DependencyTests reads this manifest to keep it so).
        .target(
            name: "I2VCore",
            dependencies: [
                "ImageIntake",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Store adapters: the core's store ports over one SQL dialect each.
        .target(
            name: "I2VStoreSQLite",
            dependencies: [
                "I2VCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "I2VStorePostgres",
            dependencies: [
                "I2VCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The GPU node: the dispatcher that claims work from the store, the worker pool, and the supervised
        // Python worker processes with their line protocol.
        .target(
            name: "I2VGPUNode",
            dependencies: [
                "I2VCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),
        // Webhook delivery: reads the core's outbox port, signs and sends over HTTP.
        .target(
            name: "I2VWebhooks",
            dependencies: [
                "I2VCore",
                "ImageIntake",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The HTTP side: the native API, the OpenAI-style API, streams, the playground and the operations
        // endpoints (which report the node's own worker pool, hence the GPU node dependency).
        .target(
            name: "I2VHTTP",
            dependencies: [
                "I2VCore",
                "I2VGPUNode",
                "I2VOpenAPI",
                "ImageIntake",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "MultipartKit", package: "multipart-kit"),
            ],
            swiftSettings: swiftSettings
        ),
        // The composition root: reads the configuration, builds every part and runs them in one ServiceGroup.
        .target(
            name: "I2VApp",
            dependencies: [
                "I2VCore",
                "I2VStoreSQLite",
                "I2VStorePostgres",
                "I2VGPUNode",
                "I2VWebhooks",
                "I2VHTTP",
                "I2VOpenAPI",
                "ImageIntake",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The OpenAPI document is the contract; this target only carries it and serves it as JSON.
        .target(
            name: "I2VOpenAPI",
            dependencies: [.product(name: "Yams", package: "Yams")],
            resources: [.copy("openapi.yaml")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ImageIntake",
            dependencies: [
                "CVips",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .systemLibrary(
            name: "CVips",
            pkgConfig: "vips",
            providers: [.apt(["libvips-dev"])]
        ),
        // Helpers both test targets use: a raw TCP server, a PNG writer.
        .target(
            name: "I2VTestSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/I2VTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "I2VAppTests",
            dependencies: [
                "I2VApp",
                "I2VCore",
                "I2VTestSupport",
                "I2VStoreSQLite",
                "I2VStorePostgres",
                "I2VGPUNode",
                "I2VWebhooks",
                "I2VHTTP",
                .product(name: "GRDB", package: "GRDB.swift"),
                "ImageIntake",
                "I2VOpenAPI",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "MultipartKit", package: "multipart-kit"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: testSwiftSettings
        ),
        .testTarget(
            name: "ImageIntakeTests",
            dependencies: [
                "ImageIntake",
                "I2VTestSupport",
                "CVips",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
