package org.edge.plan;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.function.Consumer;

/** The app's headless benchmark: the same JSON-line records as `python -m device.measure` and the
 * native runner (device, one per budget level, one per branch-forcing check with its parity against
 * the bundled eager outputs, memory), so the profiler's adb target reads them as it reads the others. */
public final class Benchmark {
    private Benchmark() {}

    public static void run(Artifact a, Driver.Methods methods, int runs, int warmup, int branchRuns,
                           Map<String, Object> device, Consumer<String> out) {
        Plan plan = a.plan;
        Map<String, Tensor> inputs = a.exampleInputs();
        Map<String, Object> d = new LinkedHashMap<>(device);
        d.put("kind", "device");
        d.put("runtime", "executorch");
        d.put("runner", "android");
        out.accept(json(d));
        for (Plan.Level level : plan.levels) {
            List<Double> ms = new ArrayList<>();
            Driver.Result r = time(plan, methods, inputs, level.knobs, runs, warmup, ms);
            out.accept("{\"kind\": \"level\", \"name\": " + json(level.name) + ", \"ms\": " + json(ms) + ", \"branch\": " + branch(plan, r) + "}");
        }
        for (int c = 0; branchRuns > 0 && c < plan.checks.size(); c++) {
            Map<String, float[]> knobs = new LinkedHashMap<>();
            for (String k : plan.knobs.keySet()) knobs.put(k, a.check("case" + c + "." + k).f);
            List<Double> ms = new ArrayList<>();
            Driver.Result r = time(plan, methods, inputs, knobs, branchRuns, 1, ms);
            Tensor[] got = r.tensors();
            double diff = 0;
            boolean same = true;
            for (int i = 0; i < got.length; i++) {
                Tensor want = a.check("case" + c + ".expected." + plan.outputs.get(i));
                if (got[i].type == Tensor.Type.FLOAT32 && got[i].f.length == want.f.length) {
                    for (int j = 0; j < want.f.length; j++) diff = Math.max(diff, Math.abs(got[i].f[j] - want.f[j]));
                } else {
                    same &= got[i].sameAs(want);
                }
            }
            out.accept("{\"kind\": \"branch\", \"case\": " + json(plan.checks.get(c)) + ", \"ms\": " + json(ms) + ", \"branch\": " + branch(plan, r)
                    + ", \"max_abs_diff\": " + diff + ", \"outputs_match\": " + (same && diff <= plan.tolerance) + "}");
        }
        Runtime rt = Runtime.getRuntime();
        out.accept(String.format(Locale.ROOT, "{\"kind\": \"memory\", \"peak_rss_mb\": %.1f, \"rss_at_start_mb\": 0}", (rt.totalMemory() - rt.freeMemory()) / 1048576.0));
    }

    static Driver.Result time(Plan plan, Driver.Methods methods, Map<String, Tensor> inputs, Map<String, float[]> knobs,
                              int runs, int warmup, List<Double> ms) {
        Driver.Result r = null;
        for (int i = 0; i < warmup; i++) r = Driver.run(plan, methods, inputs, knobs);
        for (int i = 0; i < runs; i++) {
            long t0 = System.nanoTime();
            r = Driver.run(plan, methods, inputs, knobs);
            ms.add((System.nanoTime() - t0) / 1e6);
        }
        return r;
    }

    /** What one run did, as device.measure.branch writes it. */
    public static String branch(Plan plan, Driver.Result r) {
        StringBuilder s = new StringBuilder("{\"exit_layer\": " + r.exitLayer + ", \"skipped\": [");
        boolean first = true;
        for (int i = 0; i < r.skipped.length; i++) {
            if (!r.skipped[i]) continue;
            s.append(first ? "" : ", ").append(i + 1);
            first = false;
        }
        s.append("]");
        if (r.ks != null && plan.experts > 0) s.append(", \"moe_fraction\": ").append(r.moeFraction(plan.experts));
        else if (r.ks != null) s.append(", \"acm_fraction\": ").append(r.acmFraction(plan.learners));
        return s.append("}").toString();
    }

    static String json(Object o) {
        if (o == null) return "null";
        if (o instanceof String) {
            StringBuilder b = new StringBuilder("\"");
            for (char c : ((String) o).toCharArray()) {
                if (c == '"' || c == '\\') b.append('\\').append(c);
                else if (c < 0x20) b.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
                else b.append(c);
            }
            return b.append('"').toString();
        }
        if (o instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : ((Map<?, ?>) o).entrySet()) b.append(b.length() > 1 ? ", " : "").append(json(String.valueOf(e.getKey()))).append(": ").append(json(e.getValue()));
            return b.append("}").toString();
        }
        if (o instanceof List) {
            StringBuilder b = new StringBuilder("[");
            for (Object x : (List<?>) o) b.append(b.length() > 1 ? ", " : "").append(json(x));
            return b.append("]").toString();
        }
        return String.valueOf(o);
    }
}
