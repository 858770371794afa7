package org.edge.demo;

import android.app.Activity;
import android.os.Build;
import android.os.Bundle;
import android.util.Log;
import java.io.FileOutputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;
import org.edge.plan.Artifact;
import org.edge.plan.Benchmark;

/** Headless benchmark (the on-device side of the profiler's adb target):
 *   adb shell am start -W -n org.edge.demo/.BenchmarkActivity --es model_dir /data/local/tmp/edge/A --ei runs 50
 * measures every budget level and branch-forcing check of the artifact in A and writes the profiler's
 * JSON-line records to A.results.jsonl, flushed line by line (an error is a {"kind": "error"} record). */
public final class BenchmarkActivity extends Activity {
    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        String dir = getIntent().getStringExtra("model_dir");
        int runs = getIntent().getIntExtra("runs", 50), warmup = getIntent().getIntExtra("warmup", 5);
        int branchRuns = getIntent().getIntExtra("branch_runs", 10);
        new Thread(() -> {
            try (Writer out = new OutputStreamWriter(new FileOutputStream(dir + ".results.jsonl", true), StandardCharsets.UTF_8)) {
                try {
                    Artifact a = Artifact.open(Paths.get(dir));
                    EtMethods methods = new EtMethods(a.program().toString());
                    Map<String, Object> device = new LinkedHashMap<>();
                    device.put("machine", Build.SUPPORTED_ABIS[0]);
                    device.put("cpu", Build.MANUFACTURER + " " + Build.MODEL + " (" + Build.HARDWARE + ")");
                    device.put("cores", Runtime.getRuntime().availableProcessors());
                    device.put("os", "Android " + Build.VERSION.RELEASE);
                    Benchmark.run(a, methods, runs, warmup, branchRuns, device, line -> write(out, line));
                    methods.destroy();
                } catch (Exception e) {
                    write(out, "{\"kind\": \"error\", \"message\": \"" + String.valueOf(e.getMessage()).replace("\\", "\\\\").replace("\"", "'") + "\"}");
                    Log.e("edge", "benchmark failed", e);
                }
            } catch (Exception e) {
                Log.e("edge", "cannot write the results next to " + dir, e);
            }
            finish();
        }).start();
    }

    private static void write(Writer out, String line) {
        try {
            out.write(line + "\n");
            out.flush();
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
