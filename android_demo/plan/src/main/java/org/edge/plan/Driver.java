package org.edge.plan;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** Runs a plan: the routed mode as device/driver.py's drive does (each segment one method call, the
 * decision after it taken here from the segment's scores and the knobs; ACM learner j on the tokens
 * that chose more than j learners, sorted once so that each learner takes a prefix; MoE expert e on
 * the tokens whose bit mask has bit e), or the graph mode's single "forward". The program's methods are called through {@link Methods}: ExecuTorch's
 * Module in the app, recorded outputs in the tests. */
public final class Driver {
    /** One method of the program on host tensors. */
    public interface Methods {
        Tensor[] call(String method, Tensor[] inputs);
    }

    /** What a run returned and what it did. */
    public static final class Result {
        public final Tensor output;
        public final int exitLayer;
        public final boolean[] skipped; // per layer
        public final long[][] ks; // per ACM or MoE layer, per token: learners run, or experts as a bit mask (-1: layer not reached); null without either

        Result(Tensor output, int exitLayer, boolean[] skipped, long[][] ks) {
            this.output = output;
            this.exitLayer = exitLayer;
            this.skipped = skipped;
            this.ks = ks;
        }

        /** The plan's outputs in its order: output, exit_layer, skipped[, ks]. */
        public Tensor[] tensors() {
            Tensor exit = Tensor.of(new long[] {exitLayer}, 1);
            Tensor skip = Tensor.of(skipped.clone(), skipped.length);
            if (ks == null) return new Tensor[] {output, exit, skip};
            long[] flat = new long[ks.length * ks[0].length];
            for (int a = 0; a < ks.length; a++) System.arraycopy(ks[a], 0, flat, a * ks[0].length, ks[0].length);
            return new Tensor[] {output, exit, skip, Tensor.of(flat, ks.length, ks[0].length)};
        }

        /** The share of learners run over the tokens of the layers reached (0 without ACMs). */
        public double acmFraction(int learners) {
            long sum = 0, n = 0;
            if (ks != null) for (long[] row : ks) for (long k : row) if (k >= 0) { sum += k; n++; }
            return n == 0 || learners == 0 ? 0.0 : (double) sum / n / learners;
        }

        /** The share of experts run over the tokens of the layers reached (0 without MoEs). */
        public double moeFraction(int experts) {
            long sum = 0, n = 0;
            if (ks != null) for (long[] row : ks) for (long k : row) if (k >= 0) { sum += Long.bitCount(k); n++; }
            return n == 0 || experts == 0 ? 0.0 : (double) sum / n / experts;
        }
    }

    private Driver() {}

    public static Result run(Plan plan, Methods methods, Map<String, Tensor> inputs, Map<String, float[]> knobs) {
        for (Map.Entry<String, Integer> k : plan.knobs.entrySet()) {
            float[] v = knobs.get(k.getKey());
            if (v == null || v.length != k.getValue()) throw new PlanException("knob " + k.getKey() + " needs " + k.getValue() + " values");
        }
        for (String name : plan.inputs) if (!inputs.containsKey(name)) throw new PlanException("the plan reads input " + name + ", which was not given");
        return plan.mode.equals("graph") ? graph(plan, methods, inputs, knobs) : routed(plan, methods, inputs, knobs);
    }

    private static Result graph(Plan plan, Methods methods, Map<String, Tensor> inputs, Map<String, float[]> knobs) {
        List<Tensor> args = new ArrayList<>();
        for (String name : plan.inputs) args.add(inputs.get(name));
        for (String k : plan.knobs.keySet()) args.add(Tensor.of(knobs.get(k), plan.knobShapes.get(k)));
        Tensor[] out = call(methods, "forward", args.toArray(new Tensor[0]), plan.outputs.size());
        boolean[] skipped = out[2].b;
        long[][] ks = null;
        if (out.length > 3) {
            int a = (int) out[3].shape[0], t = (int) out[3].shape[1];
            ks = new long[a][t];
            for (int i = 0; i < a; i++) System.arraycopy(out[3].l, i * t, ks[i], 0, t);
        }
        return new Result(out[0], (int) out[1].l[0], skipped, ks);
    }

    private static Result routed(Plan plan, Methods methods, Map<String, Tensor> inputs, Map<String, float[]> knobs) {
        Map<String, Tensor> values = new HashMap<>(inputs);
        int exitLayer = plan.layers;
        boolean[] skipped = new boolean[plan.layers];
        long[][] ks = null;
        Tensor output;
        int s = 0;
        while (true) {
            Plan.Segment seg = plan.segments.get(s);
            Plan.Then then = seg.then;
            Tensor[] feeds = new Tensor[seg.inputs.size()];
            for (int i = 0; i < feeds.length; i++) {
                String name = seg.inputs.get(i);
                feeds[i] = Plan.KNOB_ROWS.contains(name) ? row(plan, knobs, name, then.adaptive()) : get(values, name);
            }
            Tensor[] out = call(methods, seg.method, feeds, seg.outputs.size());
            for (int i = 0; i < out.length; i++) values.put(seg.outputs.get(i), out[i]);
            if (then.kind.equals("end")) {
                output = get(values, "output");
                break;
            }
            if (then.kind.equals("exit")) {
                if (get(values, "conf").f[0] >= knobs.get("exit_thresholds")[then.exit]) {
                    output = get(values, "exit_output");
                    exitLayer = then.layer;
                    break;
                }
                s = then.next;
            } else if (then.kind.equals("skip")) {
                boolean keep = get(values, "score").f[0] >= knobs.get("skip_thresholds")[then.router];
                skipped[then.layer - 1] = !keep;
                s = keep ? then.keep : then.skip;
            } else { // "acm": piece j runs on the tokens that chose more than j learners; "moe": expert e on the
                // tokens with bit e; their outputs added
                Tensor x = get(values, "x"), k = get(values, "k"); // (T, H), (T,)
                int t = (int) x.shape[0], h = (int) x.shape[1];
                if (k.l == null || k.l.length != t) throw new PlanException("method " + seg.method + " returned k of the wrong shape " + k);
                float[] y = then.kind.equals("acm") ? learners(methods, then, x, k.l) : experts(methods, then, x, k.l);
                values.put("y", Tensor.of(y, 1, t, h));
                if (ks == null) {
                    ks = new long[plan.acms][t];
                    for (long[] row : ks) Arrays.fill(row, -1);
                }
                ks[then.adaptive()] = k.l.clone();
                s = then.next;
            }
        }
        if (plan.acms > 0 && ks == null) { // no ACM or MoE was reached: every row is -1
            ks = new long[plan.acms][(int) get(values, "h").shape[1]];
            for (long[] row : ks) Arrays.fill(row, -1);
        }
        return new Result(output, exitLayer, skipped, plan.acms > 0 ? ks : null);
    }

    /** An ACM's output (device/driver.py run_learners): piece j runs on the tokens with k > j (top: k = n
     * runs the last alone), one call on spans of the tokens sorted by k, most first. */
    private static float[] learners(Methods methods, Plan.Then then, Tensor x, long[] kk) {
        int t = (int) x.shape[0], h = (int) x.shape[1];
        Integer[] order = new Integer[t];
        for (int i = 0; i < t; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> Long.compare(kk[b], kk[a])); // most learners first; stable
        int[] counts = new int[then.n]; // tokens per piece: a span of the sorted tokens
        for (int j = 0; j < then.n; j++) for (long v : kk) if (v > j) counts[j]++;
        // piece j takes rows [start_j, counts[j]); with the exact top the first counts[n-1] tokens run the last piece alone
        int first = then.top ? counts[then.n - 1] : 0;
        float[] xs = new float[t * h], ys = new float[t * h];
        if (counts[0] > 0) { // one call for all pieces; one no token needs gets 1 row, dropped
            for (int r = 0; r < t; r++) System.arraycopy(x.f, order[r] * h, xs, r * h, h);
            Tensor[] prefixes = new Tensor[then.n];
            int[] start = new int[then.n];
            for (int j = 0; j < then.n; j++) {
                start[j] = j < then.n - 1 ? first : 0;
                int rows = counts[j] - start[j], from = rows > 0 ? start[j] : 0;
                prefixes[j] = Tensor.of(Arrays.copyOfRange(xs, from * h, (from + Math.max(rows, 1)) * h), Math.max(rows, 1), h);
            }
            Tensor[] got = call(methods, then.learners, prefixes, then.n);
            for (int j = 0; j < then.n; j++) {
                float[] g = got[j].f;
                int rows = counts[j] - start[j];
                if (g == null || g.length != Math.max(rows, 1) * h) throw new PlanException("learners " + then.learners + " returned the wrong shape");
                for (int i = 0; i < Math.max(rows, 0) * h; i++) ys[start[j] * h + i] += g[i];
            }
        }
        float[] y = new float[t * h];
        for (int r = 0; r < t; r++) System.arraycopy(ys, r * h, y, order[r] * h, h);
        return y;
    }

    /** A MoE's experts' outputs summed (device/driver.py run_experts): expert e runs on the tokens whose
     * route has bit e, in their order; one call, an expert no token needs gets the first row (an input
     * has at least one), dropped; no call when no token runs an expert. */
    private static float[] experts(Methods methods, Plan.Then then, Tensor x, long[] k) {
        int t = (int) x.shape[0], h = (int) x.shape[1];
        float[] y = new float[t * h]; // zero for the tokens that run no expert
        int[][] rows = new int[then.n][];
        boolean any = false;
        for (int e = 0; e < then.n; e++) {
            int m = 0;
            for (long v : k) if ((v >> e & 1) != 0) m++;
            rows[e] = new int[m];
            for (int i = 0, r = 0; i < t; i++) if ((k[i] >> e & 1) != 0) rows[e][r++] = i;
            any |= m > 0;
        }
        if (!any) return y;
        Tensor[] ins = new Tensor[then.n];
        for (int e = 0; e < then.n; e++) {
            int m = Math.max(rows[e].length, 1);
            float[] xs = new float[m * h];
            for (int r = 0; r < m; r++) System.arraycopy(x.f, (rows[e].length > 0 ? rows[e][r] : 0) * h, xs, r * h, h);
            ins[e] = Tensor.of(xs, m, h);
        }
        Tensor[] got = call(methods, then.experts, ins, then.n);
        for (int e = 0; e < then.n; e++) {
            float[] g = got[e].f;
            if (g == null || g.length != Math.max(rows[e].length, 1) * h) throw new PlanException("experts " + then.experts + " returned the wrong shape");
            for (int r = 0; r < rows[e].length; r++) for (int i = 0; i < h; i++) y[rows[e][r] * h + i] += g[r * h + i];
        }
        return y;
    }

    /** Row `index` of a knob of shape (A, ...) as a tensor of shape (1, ...): a gate's own row. */
    private static Tensor row(Plan plan, Map<String, float[]> knobs, String name, int index) {
        long[] shape = plan.knobShapes.get(name).clone();
        int width = knobs.get(name).length / (int) shape[0];
        shape[0] = 1;
        return Tensor.of(Arrays.copyOfRange(knobs.get(name), index * width, (index + 1) * width), shape);
    }

    private static Tensor[] call(Methods methods, String method, Tensor[] inputs, int outputs) {
        Tensor[] out = methods.call(method, inputs);
        if (out == null || out.length != outputs)
            throw new PlanException("method " + method + " returned " + (out == null ? 0 : out.length) + " outputs, the plan lists " + outputs + "; the program and plan.json do not belong together");
        return out;
    }

    private static Tensor get(Map<String, Tensor> values, String name) {
        Tensor t = values.get(name);
        if (t == null) throw new PlanException("the plan reads \"" + name + "\" before any method wrote it; export the model again");
        return t;
    }
}
