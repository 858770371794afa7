package org.edge.demo;

import org.edge.plan.Driver;
import org.edge.plan.PlanException;
import org.edge.plan.Tensor;
import org.pytorch.executorch.DType;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;

/** The program's methods through ExecuTorch's Android Module: one .pte holds every segment and learner
 * of the routed plan (XNNPACK-delegated); the plan interpreter calls them by name. */
final class EtMethods implements Driver.Methods {
    private final Module module;

    EtMethods(String pte) {
        module = Module.load(pte);
    }

    @Override
    public Tensor[] call(String method, Tensor[] inputs) {
        EValue[] args = new EValue[inputs.length];
        for (int i = 0; i < inputs.length; i++) {
            Tensor t = inputs[i];
            switch (t.type) {
                case FLOAT32: args[i] = EValue.from(org.pytorch.executorch.Tensor.fromBlob(t.f, t.shape)); break;
                case INT64: args[i] = EValue.from(org.pytorch.executorch.Tensor.fromBlob(t.l, t.shape)); break;
                default: throw new PlanException("method " + method + " takes a bool input; the app passes float32 and int64 only");
            }
        }
        EValue[] outs = module.execute(method, args);
        Tensor[] result = new Tensor[outs.length];
        for (int i = 0; i < outs.length; i++) {
            org.pytorch.executorch.Tensor t = outs[i].toTensor();
            if (t.dtype() == DType.FLOAT) result[i] = Tensor.of(t.getDataAsFloatArray(), t.shape());
            else if (t.dtype() == DType.INT64) result[i] = Tensor.of(t.getDataAsLongArray(), t.shape());
            else throw new PlanException("method " + method + " returned " + t.dtype() + "; export with edge export --to executorch --mode routed");
        }
        return result;
    }

    void destroy() {
        module.destroy();
    }
}
